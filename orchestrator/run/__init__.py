"""The run state machine and one module per stage, each taking the run's context."""
