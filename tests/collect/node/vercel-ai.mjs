// A real Vercel AI SDK client with its telemetry on, exporting over OTLP/HTTP to onfinish collect.
// Run by tests/collect/test_vercel_ai.py with the machine's Node.js:
//   node vercel-ai.mjs <endpoint, e.g. http://127.0.0.1:4318/v1/traces> <json|protobuf> <run id>
// The model is the AI SDK's own mock (ai/test), so no provider is called; everything else (spans,
// attributes, batching, the exporter and its retries) is the real SDK's. Prints one JSON line with
// what was asked and answered, for the test to compare with what ClickHouse stores.
import { NodeSDK } from "@opentelemetry/sdk-node";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtobufExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { resourceFromAttributes } from "@opentelemetry/resources";
import { generateText, streamText, simulateReadableStream, APICallError } from "ai";
import { MockLanguageModelV3 } from "ai/test";

const [endpoint, encoding, runId] = process.argv.slice(2);
const Exporter = encoding === "protobuf" ? ProtobufExporter : JsonExporter;
const sdk = new NodeSDK({
  resource: resourceFromAttributes({
    "service.name": `vercel-${runId}`,
    "deployment.environment.name": "test",
  }),
  spanProcessors: [new BatchSpanProcessor(new Exporter({ url: endpoint }), { scheduledDelayMillis: 200 })],
});
sdk.start();

const usage = {
  inputTokens: { total: 2000, noCache: 500, cacheRead: 1500, cacheWrite: 0 },
  outputTokens: { total: 400, text: 150, reasoning: 250 },
};
const finishReason = { unified: "stop", raw: "stop" };
const telemetry = (functionId) => ({
  isEnabled: true,
  functionId,
  metadata: { sessionId: `session-${runId}`, userId: "user-7" },
});

const generated = new MockLanguageModelV3({
  provider: "openai.chat",
  modelId: "gpt-4o-mini",
  doGenerate: async () => ({
    content: [{ type: "text", text: "Paris." }],
    finishReason,
    usage,
    warnings: [],
    response: { id: `resp-generate-${runId}`, modelId: "gpt-4o-mini-2024-07-18", timestamp: new Date() },
  }),
});
const streamed = new MockLanguageModelV3({
  provider: "openai.chat",
  modelId: "gpt-4o-mini",
  doStream: async () => ({
    stream: simulateReadableStream({
      initialDelayInMs: 120,
      chunkDelayInMs: 10,
      chunks: [
        { type: "response-metadata", id: `resp-stream-${runId}`, modelId: "gpt-4o-mini-2024-07-18" },
        { type: "text-start", id: "t1" },
        { type: "text-delta", id: "t1", delta: "Par" },
        { type: "text-delta", id: "t1", delta: "is." },
        { type: "text-end", id: "t1" },
        { type: "finish", finishReason, usage },
      ],
    }),
  }),
});
const failing = new MockLanguageModelV3({
  provider: "openai.chat",
  modelId: "gpt-4o-mini",
  doGenerate: async () => {
    throw new APICallError({
      message: "Rate limit reached",
      url: "http://127.0.0.1/v1/chat/completions",
      requestBodyValues: {},
      statusCode: 429,
      isRetryable: false,
    });
  },
});

const answers = {};
const generatedResult = await generateText({
  model: generated,
  prompt: "Capital of France?",
  experimental_telemetry: telemetry("generate"),
});
answers.generate = generatedResult.text;
const streamResult = streamText({
  model: streamed,
  prompt: "Capital of France?",
  experimental_telemetry: telemetry("stream"),
});
answers.stream = await streamResult.text;
try {
  await generateText({ model: failing, prompt: "Hello?", maxRetries: 0, experimental_telemetry: telemetry("fail") });
} catch (error) {
  answers.error = error.name;
}
await sdk.shutdown();
console.log(JSON.stringify({ runId, encoding, answers }));
