// Drives the emulator with @azure/batch (JavaScript) through one pool/job/task lifecycle and prints
// what the client read back as one JSON object; the Python test judges it.
// env: BATCH_ENDPOINT, BATCH_ACCOUNT, BATCH_KEY, POOL_ID, JOB_ID
"use strict";
const { BatchServiceClient, BatchSharedKeyCredentials } = require("@azure/batch");

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function until(what, check, timeoutMs = 60000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

async function readStream(stream) {
  const chunks = [];
  for await (const chunk of stream) chunks.push(Buffer.from(chunk));
  return Buffer.concat(chunks).toString("utf8");
}

async function statusOf(promise) {
  try {
    await promise;
    return { status: 200 };
  } catch (error) {
    return { status: error.statusCode, code: error.code };
  }
}

async function main() {
  const client = new BatchServiceClient(
    new BatchSharedKeyCredentials(env("BATCH_ACCOUNT"), env("BATCH_KEY")),
    env("BATCH_ENDPOINT"),
  );
  const poolId = env("POOL_ID");
  const jobId = env("JOB_ID");
  const report = {};

  await client.pool.add({
    id: poolId,
    vmSize: "standard_d2s_v3",
    virtualMachineConfiguration: {
      imageReference: { publisher: "canonical", offer: "ubuntu-24_04-lts", sku: "server" },
      nodeAgentSKUId: "batch.node.ubuntu 24.04",
    },
    targetDedicatedNodes: 1,
    taskSlotsPerNode: 2,
    startTask: {
      commandLine: "/bin/sh -c 'echo start task ran'",
      waitForSuccess: true,
      userIdentity: { autoUser: { scope: "pool", elevationLevel: "admin" } },
    },
  });
  const steady = () =>
    until("pool steady", async () => {
      const pool = await client.pool.get(poolId);
      return pool.allocationState === "steady" ? pool : null;
    });
  let pool = await steady();
  report.pool = {
    targetDedicatedNodes: pool.targetDedicatedNodes,
    currentDedicatedNodes: pool.currentDedicatedNodes,
    elevationLevel: pool.startTask.userIdentity.autoUser.elevationLevel,
  };
  const listed = await client.pool.list({ poolListOptions: { filter: `id eq '${poolId}'` } });
  report.poolListIds = listed.map((p) => p.id);

  const nodes = await until("an idle node", async () => {
    const all = await client.computeNode.list(poolId);
    return all.length === 1 && all[0].state === "idle" ? all : null;
  });
  report.nodeStates = nodes.map((n) => n.state);
  const nodeFiles = await client.file.listFromComputeNode(poolId, nodes[0].id, { recursive: true });
  report.nodeFileNames = nodeFiles.map((f) => f.name);
  const startStdout = await client.file.getFromComputeNode(poolId, nodes[0].id, "startup/stdout.txt");
  report.startTaskStdout = await readStream(startStdout.readableStreamBody);

  await client.pool.resize(poolId, { targetDedicatedNodes: 2 });
  pool = await until("pool resized", async () => {
    const current = await client.pool.get(poolId);
    return current.allocationState === "steady" && current.currentDedicatedNodes === 2 ? current : null;
  });
  report.resized = { targetDedicatedNodes: pool.targetDedicatedNodes, currentDedicatedNodes: pool.currentDedicatedNodes };

  await client.job.add({ id: jobId, poolInfo: { poolId } });
  await client.job.patch(jobId, { priority: 100 });
  report.jobPriority = (await client.job.get(jobId)).priority;

  const command = "/bin/sh -c 'echo hello from $AZ_BATCH_TASK_ID'";
  await client.task.add(jobId, { id: "t0", commandLine: command });
  const added = await client.task.addCollection(jobId, [1, 2, 3, 4, 5].map((i) => ({ id: `t${i}`, commandLine: command })));
  report.addCollectionStatuses = added.value.map((r) => r.status);

  report.taskCounts = await until("all tasks completed", async () => {
    const counts = (await client.job.getTaskCounts(jobId)).taskCounts;
    return counts.completed === 6 ? counts : null;
  });

  const pages = [];
  let page = await client.task.list(jobId, {
    taskListOptions: { filter: "state eq 'completed'", select: "id,state", maxResults: 2 },
  });
  pages.push(page.map((t) => t.id));
  while (page.odatanextLink) {
    page = await client.task.listNext(page.odatanextLink);
    pages.push(page.map((t) => t.id));
  }
  report.completedTaskPages = pages;

  const taskFiles = await client.file.listFromTask(jobId, "t0");
  report.taskFileNames = taskFiles.map((f) => f.name);
  report.taskStdout = await readStream((await client.file.getFromTask(jobId, "t0", "stdout.txt")).readableStreamBody);

  await client.task.deleteMethod(jobId, "t5");
  report.deletedTaskGet = await statusOf(client.task.get(jobId, "t5"));
  const wrongKey = Buffer.alloc(64, 7).toString("base64");
  const intruder = new BatchServiceClient(
    new BatchSharedKeyCredentials(env("BATCH_ACCOUNT"), wrongKey),
    env("BATCH_ENDPOINT"),
  );
  report.wrongKeyDelete = await statusOf(intruder.job.deleteMethod(jobId));
  await client.job.deleteMethod(jobId);
  report.deletedJobGet = await until("job gone", async () => {
    const result = await statusOf(client.job.get(jobId));
    return result.status === 404 ? result : null;
  });
  await client.pool.deleteMethod(poolId);
  report.deletedPoolGet = await until("pool gone", async () => {
    const result = await statusOf(client.pool.get(poolId));
    return result.status === 404 ? result : null;
  });
  process.stdout.write(JSON.stringify(report));
}

main().catch((error) => {
  const detail = error && error.body ? JSON.stringify(error.body) : "";
  process.stderr.write(`${error && error.stack ? error.stack : error}\n${detail}\n`);
  process.exit(1);
});
