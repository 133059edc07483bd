// Signs request descriptions with @azure/batch's own BatchSharedKeyCredentials and prints the
// headers it set, so tests can check the emulator's verifier against the JavaScript signer itself.
// stdin: {"account": ..., "key": ..., "requests": [{"method", "url", "headers", "body"}]}
"use strict";
const { BatchSharedKeyCredentials } = require("@azure/batch");
const { WebResource } = require("@azure/ms-rest-js");

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const input = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const credentials = new BatchSharedKeyCredentials(input.account, input.key);
  const signed = [];
  for (const request of input.requests) {
    const resource = new WebResource(
      request.url,
      request.method,
      request.body === null ? undefined : request.body,
      undefined,
      request.headers,
    );
    await credentials.signRequest(resource);
    signed.push(resource.headers.rawHeaders());
  }
  process.stdout.write(JSON.stringify(signed));
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error) + "\n");
  process.exit(1);
});
