// Drives mpp-client-net (an MPP client written independently of this server, pinned in
// package.json) for tests/mpp.rs: what the client receives goes out as JSON lines on stdout,
// commands come in as JSON lines on stdin. Usage: node client.cjs <ws url> <room> [token]
"use strict";
const { Client } = require("mpp-client-net");
const readline = require("node:readline");

const [url, room, token] = process.argv.slice(2);
const client = new Client(url, token || undefined);
const out = (ev, msg) => process.stdout.write(JSON.stringify({ ev, msg }) + "\n");

for (const ev of ["hi", "ch", "c", "a", "n", "p", "bye", "ls", "nq", "notification", "m"]) {
  client.on(ev, (msg) => out(ev, msg));
}
client.on("disconnect", (e) => out("disconnect", { code: e.code, reason: e.reason }));

// The room to join once the server said hi (the client sends ch then).
client.setChannel(room);
client.start();

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const c = JSON.parse(line);
  switch (c.cmd) {
    case "chat":
      client.sendChat(c.text);
      break;
    case "ch":
      client.setChannel(c.room);
      break;
    case "chown":
      client.chown(c.id);
      break;
    case "chset":
      client.chset(c.set);
      break;
    case "raw":
      client.sendArray(c.msgs);
      break;
    case "stop":
      client.stop();
      process.exit(0);
  }
});
process.stdin.on("end", () => {
  client.stop();
  process.exit(0);
});
