'use strict';
// The pub/sub server of seeds/004 ("Example Node.js with Redis"), written again
// for wsclient's interop tests. Redis is replaced by an in-process fan-out, so
// the server needs nothing but `ws`; the wire shapes are the seed's:
//
//   in:  {"action": "subscribe" | "unsubscribe", "channel": C}
//        {"action": "publish", "channel": C, "data": D}
//   out: {"channel": "system", "data": {"type": "subscription_confirm", "channel": C}}
//        {"channel": C, "data": D}   to every subscriber of C, the publisher too
//
// It listens on 127.0.0.1 on a port the OS chooses and prints one line,
// `LISTENING <port>`, to stdout; everything else goes to stderr. It exits on
// SIGTERM or SIGINT and when its stdin closes, so it never outlives its parent
// (by hand, keep stdin open: `node pubsub_server.js` in a terminal, not `&`).

const WebSocket = require('ws');

// Stands in for Redis: channel -> the sockets subscribed to it.
const broker = new Map();
// socket -> its client data, as in the seed.
const clients = new Map();

const wss = new WebSocket.Server({ host: '127.0.0.1', port: 0 });

wss.on('listening', () => {
  process.stdout.write(`LISTENING ${wss.address().port}\n`);
});

wss.on('connection', (ws) => {
  const clientData = { subscriptions: new Set() };
  clients.set(ws, clientData);

  ws.on('message', (message) => {
    try {
      const data = JSON.parse(message);
      switch (data.action) {
        case 'subscribe':
          handleSubscribe(ws, clientData, data.channel);
          break;
        case 'unsubscribe':
          handleUnsubscribe(ws, clientData, data.channel);
          break;
        case 'publish':
          handlePublish(data.channel, data.data);
          break;
        default:
          console.warn(`Unknown action: ${data.action}`);
      }
    } catch (error) {
      console.error('Error processing message:', error);
    }
  });

  ws.on('close', () => {
    // The seed drops the Redis subscription of every channel here, even ones
    // other clients still use; leave each channel as an unsubscribe would.
    for (const channel of clientData.subscriptions) {
      handleUnsubscribe(ws, clientData, channel);
    }
    clients.delete(ws);
  });
});

function handleSubscribe(ws, clientData, channel) {
  if (!broker.has(channel)) {
    broker.set(channel, new Set());
  }
  broker.get(channel).add(ws);
  clientData.subscriptions.add(channel);
  ws.send(JSON.stringify({
    channel: 'system',
    data: { type: 'subscription_confirm', channel },
  }));
}

function handleUnsubscribe(ws, clientData, channel) {
  clientData.subscriptions.delete(channel);
  const sockets = broker.get(channel);
  if (sockets === undefined) {
    return;
  }
  sockets.delete(ws);
  const hasOtherSubscribers = sockets.size > 0;
  if (!hasOtherSubscribers) {
    broker.delete(channel);
  }
}

function handlePublish(channel, data) {
  const message = JSON.stringify({ channel, data });
  for (const ws of broker.get(channel) ?? []) {
    if (ws.readyState === WebSocket.OPEN) {
      ws.send(message);
    }
  }
}

function shutdown() {
  process.exit(0);
}

process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
process.stdin.on('end', shutdown);
process.stdin.on('error', shutdown);
process.stdin.resume();
