// Calls a heteronn host's PredictionService from Node.js, using nothing of heteronn but its
// .proto files (docs/inference.md, "Calling Predict from another service").
//
//   npm install                       # @grpc/grpc-js and @grpc/proto-loader, pinned in package.json
//   node predict.js --address HOST:PORT --proto-root ../../proto \
//       [--ca ca.crt --cert client.crt --key client.key --server-name NODE_ID] ID...
//
// Prints one JSON line per id: {"id", "status", "predicted_class", "scores", "missing_at"}.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

function parseArgs(argv) {
  const opts = { ids: [], timeoutMs: 10000 };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith("--")) {
      opts[a.slice(2).replace(/-([a-z])/g, (_, c) => c.toUpperCase())] = argv[++i];
    } else {
      opts.ids.push(a);
    }
  }
  if (!opts.address || !opts.protoRoot || opts.ids.length === 0) {
    console.error("usage: node predict.js --address HOST:PORT --proto-root DIR [TLS options] ID...");
    process.exit(2);
  }
  return opts;
}

function credentials(opts) {
  if (!opts.ca) return grpc.credentials.createInsecure();
  // Mutual TLS: the CA of the deployment and this client's certificate from it.
  return grpc.credentials.createSsl(
    fs.readFileSync(opts.ca), fs.readFileSync(opts.key), fs.readFileSync(opts.cert));
}

function main() {
  const opts = parseArgs(process.argv.slice(2));
  const definition = protoLoader.loadSync(
    path.join(opts.protoRoot, "heteronn/v1/serving.proto"),
    { includeDirs: [opts.protoRoot], keepCase: true, enums: String, defaults: true },
  );
  const v1 = grpc.loadPackageDefinition(definition).heteronn.v1;
  const channelOptions = opts.serverName
    ? { "grpc.ssl_target_name_override": opts.serverName } : {};
  const client = new v1.PredictionService(opts.address, credentials(opts), channelOptions);
  const deadline = new Date(Date.now() + Number(opts.timeoutMs));
  client.Predict({ ids: opts.ids }, { deadline }, (err, reply) => {
    if (err) {
      console.error(`Predict failed: ${grpc.status[err.code]}: ${err.details}`);
      process.exit(1);
    }
    for (const p of reply.predictions) {
      console.log(JSON.stringify({
        id: p.id,
        status: p.status,
        predicted_class: p.predicted_class,
        scores: p.scores,
        missing_at: p.missing_at,
        model_id: reply.model_id,
      }));
    }
    client.close();
  });
}

main();
