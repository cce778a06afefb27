// Drive the hub over streamable HTTP with the TypeScript MCP SDK, a client
// written independently of the Python SDK the hub is built on.
//
// Usage: node ts_client.mjs URL TOKEN
// Lists the tools, calls a_echo and hub_status, reads hub://status, and exits
// 0 when every step succeeded, 1 otherwise. One line per step goes to stdout.
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const [url, token] = process.argv.slice(2);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const client = new Client({ name: "ts-sdk-test-client", version: "1.0.0" });
let failures = 0;

async function step(label, run) {
  try {
    const value = await run();
    console.log(`OK ${label}: ${JSON.stringify(value).slice(0, 300)}`);
  } catch (error) {
    failures += 1;
    console.log(`FAIL ${label}: ${error.code ?? ""} ${error.message}`);
  }
}

await client.connect(transport);
console.log(`server ${JSON.stringify(client.getServerVersion())}`);
await step("tools/list", async () => (await client.listTools()).tools.map((tool) => tool.name));
await step("tools/call a_echo", async () => {
  const result = await client.callTool({ name: "a_echo", arguments: { text: "from node" } });
  if (result.isError || result.content[0].text !== "from node") {
    throw new Error(`unexpected result ${JSON.stringify(result)}`);
  }
  return result.content[0].text;
});
await step("tools/call hub_status", async () => {
  const result = await client.callTool({ name: "hub_status", arguments: {} });
  if (!result.structuredContent.ready) throw new Error("hub not ready");
  return result.structuredContent.ready;
});
await step("resources/read hub://status", async () => {
  const result = await client.readResource({ uri: "hub://status" });
  return JSON.parse(result.contents[0].text).ready;
});
await client.close();
console.log(failures ? `FAILED ${failures}` : "PASS");
process.exit(failures ? 1 : 0);
