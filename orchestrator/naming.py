"""Every id and name a run derives from its inputs, in one place (pure functions, no I/O).

docs/contracts.md fixes these formats: the node, the journal and resume all rely on them, so a name
is always computed here and never spelled out anywhere else.
"""

from __future__ import annotations

import hashlib
import math
import re
import secrets
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime

_RUN_ID = re.compile(r"^\d{8}t\d{6}z-[0-9a-f]{6}$")


def new_run_id(now: datetime | None = None, random_hex: str | None = None) -> str:
    """A sortable run id, `YYYYMMDDtHHMMSSz-xxxxxx` (UTC time plus 6 random hex digits)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    suffix = random_hex if random_hex is not None else secrets.token_hex(3)
    run_id = f"{moment:%Y%m%dt%H%M%Sz}-{suffix}".lower()
    if not is_run_id(run_id):
        raise ValueError(f"not a valid run id: {run_id!r}")
    return run_id


def is_run_id(text: str) -> bool:
    """True when `text` has the run id format (it is then also valid inside a container name)."""
    return bool(_RUN_ID.match(text))


def job_id(run_id: str, number: int = 1) -> str:
    """The run's job: `topn-<run_id>`; a successor a resume made (number 2, 3, ...): `topn-<run_id>-j<n>`."""
    if number < 1:
        raise ValueError("a job number starts at 1")
    return f"topn-{run_id}" if number == 1 else f"topn-{run_id}-j{number}"


def run_id_of_job(job: str) -> str | None:
    """The run a job of topn's belongs to (`topn-<run_id>` or a successor `topn-<run_id>-j<n>`), else None."""
    if not job.startswith("topn-"):
        return None
    run_id = job.removeprefix("topn-")
    base, separator, number = run_id.rpartition("-j")
    if separator and number.isdigit() and int(number) >= 2 and is_run_id(base):
        return base
    return run_id


def task_id(index: int) -> str:
    """A work unit's task id from its position in the run's sorted inputs (stable across resumes)."""
    if index < 0:
        raise ValueError("a task index cannot be negative")
    return f"t{index:06d}"


def task_generation_id(task_id: str, generation: int) -> str:
    """The Batch id of a work unit's task in `generation`: the plain id first, `<id>-g<n>` once re-issued.

    A resume re-issues an unstarted task (fresh SAS) under the next generation's id, added before the
    old one is deleted: a deleted task can linger on the service, and it must not swallow the new one.
    """
    if generation < 0:
        raise ValueError("a task generation cannot be negative")
    return task_id if generation == 0 else f"{task_id}-g{generation}"


def app_container(prefix: str) -> str:
    """Container holding the packed node script, shared by all runs."""
    return f"{prefix}-app"


def input_container(prefix: str, run_id: str) -> str:
    """The run's own input container (its inputs under `runs/<run_id>/`, its unit manifests under `units/`).

    Its own, like the output container: a unit's manifest gives the node a read SAS on the whole
    container (one SAS per unit, not one per input), which must reach this run's inputs only.
    """
    return f"{prefix}-in-{run_id}"


def output_container(prefix: str, run_id: str) -> str:
    """The run's own output container; the node's write SAS is scoped to it and nothing else."""
    return f"{prefix}-out-{run_id}"


def node_blob_name(sha256_hex: str) -> str:
    """Blob of the packed node script, keyed by its content so versions never overwrite each other."""
    return f"node/{sha256_hex[:12]}/node.pyz"


def input_blob_name(run_id: str, relpath: str) -> str:
    """Where an input lives in the input container: `runs/<run_id>/<relpath>`.

    A relpath too deep for a blob name under those two segments (`MAX_BLOB_SEGMENTS`) keeps its
    first folders and ends in `<stem>~<hash><ext>`, as `output_name` shortens a deep result.
    """
    kept = MAX_BLOB_SEGMENTS - _INPUT_PREFIX_SEGMENTS
    if relpath.count("/") < kept:
        return f"runs/{run_id}/{relpath}"
    folder, _, file_name = relpath.rpartition("/")
    return f"runs/{run_id}/{_first_folders(folder, kept - 1)}/{_hashed_name(relpath, file_name, '')}"


def run_input_prefix(run_id: str) -> str:
    """The prefix of all of a run's input blobs (what a resume lists to check its recorded uploads)."""
    return f"runs/{run_id}/"


def unit_manifest_blob(task_id: str) -> str:
    """A work unit's manifest (`topn.unit`) in the run's input container; no input blob starts `units/`."""
    return f"units/{task_id}.json"


def unit_pack_blob(task_id: str) -> str:
    """A work unit's pack (its small local inputs end to end) in the run's input container.

    Beside the manifests, outside `runs/`: no input blob can have this name.
    """
    return f"units/{task_id}.pack"


def unit_manifest_file(task_id: str) -> str:
    """The manifest's file name on the node (the task's resource file); it names the unit, nothing else."""
    return f"unit-{task_id}.json"


def unit_result_name(task_id: str) -> str:
    """A work unit's result blob (`topn.result`) in the run's output container.

    No `_OUTPUT` name can equal it: every output name has `_OUTPUT` in its last part.
    """
    return f"results/{task_id}.json.gz"


class UnsafeNameError(ValueError):
    """A name that could reach outside the folder or container it is meant to stay in."""


# `C:` at the start: on Windows, joining it to the results folder would jump to another drive.
_DRIVE_PREFIX = re.compile(r"^[A-Za-z]:")


def check_relative_name(name: str) -> str:
    """Return `name` if it is a plain relative POSIX path that stays inside the folder it is joined to.

    Refused (UnsafeNameError says why): empty names, absolute paths, `.` / `..` / empty parts,
    backslashes (Windows and Blob Storage read them as separators), NUL, and a leading drive letter.
    These names reach local paths (results) and blob names, so nothing may climb out of its folder.
    """
    if not name:
        raise UnsafeNameError("empty name")
    if "\x00" in name:
        raise UnsafeNameError(f"name contains NUL: {name!r}")
    if "\\" in name:
        raise UnsafeNameError(f"name contains a backslash, a path separator on Windows: {name!r}")
    if name.startswith("/"):
        raise UnsafeNameError(f"name is an absolute path: {name!r}")
    if _DRIVE_PREFIX.match(name):
        raise UnsafeNameError(f"name starts with a drive letter: {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise UnsafeNameError(f"name has an empty, '.' or '..' part that could leave its folder: {name!r}")
    return name


# A file name's limit on common filesystems (ext4, XFS, btrfs, APFS, tmpfs): 255 bytes.
MAX_FILE_NAME_BYTES = 255
# Blob Storage refuses (400) a blob name of more than 1,024 characters or of more than 254 path
# segments (Microsoft, "Naming and Referencing Containers, Blobs, and Metadata"). Azurite enforces
# neither, so every derived name is kept within both here, where a test can check it.
MAX_BLOB_NAME_CHARS = 1024
MAX_BLOB_SEGMENTS = 254
_INPUT_PREFIX_SEGMENTS = 2  # `runs/<run_id>/`
# An extension longer than this is part of the name to shorten, not something worth keeping whole.
_KEPT_EXTENSION_BYTES = 16
_NAME_HASH_CHARS = 12


def output_name(relpath: str) -> str:
    """`<relpath without extension>_OUTPUT<ext>`, the seed's output name with the folders kept.

    A legal input name of up to 255 bytes would give a result name over the filesystem's limit, so a
    result name that would pass `MAX_FILE_NAME_BYTES` is shortened deterministically: the start of the
    name (cut on a character boundary), `~` and a hash of the whole relpath (two long names never
    collide), `_OUTPUT` and the extension. A relpath deeper than a blob name may be
    (`MAX_BLOB_SEGMENTS`) keeps its first 253 folders and gets the same hashed file name, so the
    result is one blob name on Azure and one file locally. summary.json's `output` says which file
    belongs to which input.
    """
    # String operations, not PurePosixPath: this runs once per file, 100,000 times in a big run.
    folder, slash, file_name = check_relative_name(relpath).rpartition("/")
    if relpath.count("/") >= MAX_BLOB_SEGMENTS:
        kept = _first_folders(folder, MAX_BLOB_SEGMENTS - 1)
        return f"{kept}/{_hashed_name(relpath, file_name, '_OUTPUT')}"
    stem, suffix = split_extension(file_name)
    name = f"{stem}_OUTPUT{suffix}"
    if len(name.encode("utf-8")) <= MAX_FILE_NAME_BYTES:
        return f"{folder}{slash}{name}"
    return f"{folder}{slash}{_hashed_name(relpath, file_name, '_OUTPUT')}"


def _hashed_name(relpath: str, file_name: str, marker: str) -> str:
    """`<start of the stem>~<hash of relpath><marker><ext>`, at most `MAX_FILE_NAME_BYTES` bytes.

    The hash is of the whole relpath, so two inputs never share the name whatever was cut away.
    """
    stem, suffix = split_extension(file_name)
    if len(suffix.encode("utf-8")) > _KEPT_EXTENSION_BYTES:
        stem, suffix = file_name, ""
    digest = hashlib.sha256(relpath.encode("utf-8")).hexdigest()[:_NAME_HASH_CHARS]
    tail = f"~{digest}{marker}{suffix}"
    budget = MAX_FILE_NAME_BYTES - len(tail.encode("utf-8"))
    start = stem.encode("utf-8")[:budget].decode("utf-8", errors="ignore")  # never half a character
    return f"{start}{tail}"


def _first_folders(folder: str, count: int) -> str:
    """The first `count` parts of a `/`-separated folder path."""
    return "/".join(folder.split("/", count)[:count])


def split_extension(file_name: str) -> tuple[str, str]:
    """A file name's stem and extension as PurePosixPath's `stem` and `suffix` give them."""
    dot = file_name.rfind(".")
    if 0 < dot < len(file_name) - 1:
        return file_name[:dot], file_name[dot:]
    return file_name, ""


NODE_SCRIPT_PATH = "$AZ_BATCH_NODE_SHARED_DIR/node.pyz"
# Where a task finds the node script it carries itself (a reused pool staged another version).
TASK_NODE_SCRIPT_PATH = "node.pyz"
OUTPUT_SAS_VARIABLE = "TOPN_OUTPUT_SAS_URL"


def task_command_line(task_id: str, *, python: str = "python3", script: str = NODE_SCRIPT_PATH) -> str:
    """The command line of a work unit's task: the node counts the unit its manifest file describes.

    Batch runs no shell, so `/bin/sh -c` expands the variables. Nothing user-named and no SAS is in
    it: input names, blob names and SAS URLs are in the manifest (docs/contracts.md); the output SAS
    is in the task's environment (`$TOPN_OUTPUT_SAS_URL`).
    """
    words = ["exec", interpreter_word(python), interpreter_word(script), "unit"]
    # Glued to its flag: the value can never be read as an option of its own.
    words.append(shlex.quote(f"--manifest={unit_manifest_file(task_id)}"))
    return f"/bin/sh -c {shlex.quote(' '.join(words))}"


# Most inputs in one unit unless configured (`[run] max_files_per_task`).
MAX_FILES_PER_UNIT = 1000
# The first units of a run are smaller, each twice the one before, up to the planned size.
RAMP_UNITS = 4
# Most bytes in one unit of several files unless configured (`[run] unit_target_bytes`).
UNIT_TARGET_BYTES = 64 * 1024 * 1024

_EXPANDABLE_PATH = re.compile(r"^[A-Za-z0-9_./${}-]+$")


def interpreter_word(python: str) -> str:
    """A program path as a shell word: double-quoted so `$AZ_BATCH_*` expands, otherwise fully quoted."""
    if "$" in python and _EXPANDABLE_PATH.match(python):
        return f'"{python}"'
    return shlex.quote(python)


def plan_work_units(
    sizes: Sequence[int],
    slots: int,
    *,
    units_per_slot: int = 4,
    max_files_per_unit: int = MAX_FILES_PER_UNIT,
    max_unit_bytes: int = UNIT_TARGET_BYTES,
    ramp_units: int = RAMP_UNITS,
) -> list[list[int]]:
    """Group consecutive inputs (by index) into work units, one task each, sized by count and bytes.

    A task costs a process start and scheduling, so many small files share one, but there stay at
    least `units_per_slot` units per task slot (when there are that many files) to keep every slot busy
    and balanced. A unit of several files never holds more than `max_files_per_unit` files or more
    than `max_unit_bytes` (a bigger file is a unit of its own). The node reads a unit's inputs from
    its manifest, so no command line limits a unit. The first `RAMP_UNITS` units are smaller (1/16,
    1/8, 1/4, 1/2 of the others): a unit's task is added once its inputs are uploaded, so the first
    task goes in after a few uploads whatever the number of files (`ramp_units=0`: no ramp, for the
    later pages of a blob listing, planned while the run's first tasks already run).
    """
    if not sizes:
        return []
    target_units = max(1, slots * units_per_slot)
    per_unit = max(1, min(max_files_per_unit, math.ceil(len(sizes) / target_units)))
    units: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for index, size in enumerate(sizes):
        limit = max(1, per_unit >> max(0, ramp_units - len(units)))
        if current and (len(current) >= limit or current_bytes + size > max_unit_bytes):
            units.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size
    units.append(current)
    return units


def start_task_command_line() -> str:
    """The local default start task: put the staged node script where every task finds it."""
    inner = f'cp node.pyz "{NODE_SCRIPT_PATH}" && python3 "{NODE_SCRIPT_PATH}" --help > /dev/null'
    return f"/bin/sh -c {shlex.quote(inner)}"


BUNDLE_CHECK_FLAG = "--bundle-check"
# The default start task outside local mode (config/azure.toml spells out the same): place the
# self-contained bundle where the non-admin task user can read and run it, and let the image's
# python3 prove it can run it. No apt, no pip: nodes need no internet beyond Storage.
AZURE_START_TASK_COMMAND = (
    "/bin/sh -c 'set -eu; python3 --version; "
    f'install -m 0755 node.pyz "{NODE_SCRIPT_PATH}"; '
    f'python3 "{NODE_SCRIPT_PATH}" {BUNDLE_CHECK_FLAG}\''
)
