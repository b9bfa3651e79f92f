'use strict';
// The Node.js forwarder that wsfwd replaces, reproduced for bench/run.sh:
// one upstream client, an http server whose 'upgrade' hands the given path
// to a ws WebSocketServer (noServer) and destroys any other socket, a pool
// of clients with ids, and a send() of each upstream message, as received
// (binary stays binary, text stays text), to every client.
//
//   node bench/node/forwarder.js UPSTREAM_URL PORT PATH [HOST]
//   FORWARDER_DEFLATE=off node bench/node/forwarder.js ...
//
// HOST defaults to 127.0.0.1 (the benchmark stays on loopback).
//
// perMessageDeflate is configured as in the original (the default, or
// FORWARDER_DEFLATE=on); FORWARDER_DEFLATE=off turns it off
// (perMessageDeflate: false: the extension is never agreed).  It only
// compresses for clients that offer the extension: the bench clients
// (bench/load) do so only with --deflate (scenario Z of bench/run.py), and
// then ws compresses every message again for every such client (threshold
// 10 bytes), in libuv's thread pool.  The bench source never accepts the
// upstream client's offer, so what comes in is always uncompressed.

const http = require('http');
const WebSocket = require('ws');

const [upstreamUrl, portArg, path = '/', host = '127.0.0.1'] =
  process.argv.slice(2);
if (!upstreamUrl || !portArg) {
  console.error('usage: node forwarder.js UPSTREAM_URL PORT PATH [HOST]');
  process.exit(2);
}
const port = Number(portArg);
const deflateSwitch = (process.env.FORWARDER_DEFLATE || 'on').toLowerCase();
if (deflateSwitch !== 'on' && deflateSwitch !== 'off') {
  console.error('FORWARDER_DEFLATE must be on or off');
  process.exit(2);
}

const wss = new WebSocket.WebSocketServer({
  noServer: true,
  perMessageDeflate: deflateSwitch === 'off' ? false : {
    zlibDeflateOptions: { chunkSize: 1024, memLevel: 7, level: 3 },
    zlibInflateOptions: { chunkSize: 10240 },
    clientNoContextTakeover: true,
    serverNoContextTakeover: true,
    clientMaxWindowBits: 10,
    serverMaxWindowBits: 10,
    concurrencyLimit: 10,
    threshold: 10,
  },
  maxPayload: 0,
});

const pool = new Map();
let nextId = 0;

wss.on('connection', (ws) => {
  const id = ++nextId;
  pool.set(id, ws);
  ws.on('error', () => {});
  ws.on('close', () => {
    pool.delete(id);
    console.log(`[${id}] has been disconnected, Total No of Connection pool : ${pool.size}`);
  });
});

const server = http.createServer((req, res) => {
  res.writeHead(404);
  res.end();
});

server.on('upgrade', (req, socket, head) => {
  let pathname;
  try {
    pathname = new URL(req.url, 'http://localhost').pathname;
  } catch (e) {
    socket.destroy();
    return;
  }
  if (pathname !== path) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

function connectUpstream() {
  const upstream = new WebSocket(upstreamUrl);
  upstream.on('open', () => console.log(`upstream connected: ${upstreamUrl}`));
  upstream.on('message', (data, isBinary) => {
    for (const ws of pool.values()) {
      if (ws.readyState === WebSocket.OPEN) ws.send(data, { binary: isBinary });
    }
  });
  upstream.on('error', (err) => console.error(`upstream error: ${err.message}`));
  upstream.on('close', () => {
    console.log('upstream closed, reconnecting in 1 s');
    setTimeout(connectUpstream, 1000);
  });
}

server.listen(port, host, () => {
  console.log(`listening on ${host}:${port}${path} (perMessageDeflate ${deflateSwitch})`);
  connectUpstream();
});
