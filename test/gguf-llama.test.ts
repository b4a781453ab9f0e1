/**
 * Checked by llama.cpp itself (node-llama-cpp 3.21.1, CPU, no download): a tiny llama GGUF
 * model with an eigenlorax-written GGUF LoRA at scale s gives the same next-token
 * log-probabilities on a fixed prompt as the model merged by eigenlorax's mergeIntoBase,
 * within 1e-4 (F32 KV cache, flash attention off; measured about 1e-5), and clearly
 * different ones from the base. Both merges are checked: of the GGUF adapter file, and of
 * the HF-named adapter in memory (names mapped and q/k rows permuted by the merge).
 * Skips, saying why, when node-llama-cpp cannot load on this platform.
 */
import test from 'ava';
import type { Token } from 'node-llama-cpp';
import path from 'node:path';
import { mergeIntoBase, openGguf, saveAdapter } from '../lib/index.js';
import { parseWithHuggingFace } from './helpers/gguf-fixtures.js';
import { tempDir } from './helpers/safetensors-fixtures.js';
import { tinyLlama, tinyLlamaAdapter, writeTinyLlama } from './helpers/tiny-llama.js';

const TOLERANCE = 1e-4;
/** Token ids of a fixed prompt: <s>, then bytes and word pieces. */
const PROMPT = [1, 3 + 0x48, 3 + 0x69, 259, 260, 3 + 0x20, 261, 262, 263, 3 + 0x2e];

type LlamaModule = typeof import('node-llama-cpp');
let llamaModule: LlamaModule | null = null;
let skipReason = '';
try {
  llamaModule = await import('node-llama-cpp');
} catch (error) {
  skipReason = `node-llama-cpp cannot be imported here: ${(error as Error).message}`;
}

async function getLlama() {
  if (llamaModule === null) return null;
  try {
    return await llamaModule.getLlama({
      build: 'never',
      gpu: false,
      usePrebuiltBinaries: true,
      skipDownload: true,
      logLevel: llamaModule.LlamaLogLevel.error,
    });
  } catch (error) {
    skipReason = `node-llama-cpp has no usable prebuilt binary on this platform: ${(error as Error).message}`;
    return null;
  }
}

const llama = await getLlama();
const maybe = llama === null ? test.skip : test;
if (llama === null) test(`skipped: ${skipReason}`, (t) => t.pass());

/** log p(next token | prefix) at every position of the prompt, `positions x vocab`. */
async function logProbs(modelPath: string, lora?: { filePath: string; scale: number }): Promise<Float64Array> {
  const model = await llama!.loadModel({ modelPath, gpuLayers: 0 });
  try {
    const context = await model.createContext({
      contextSize: 64,
      sequences: 1,
      flashAttention: false,
      experimentalKvCacheKeyType: 'F32',
      experimentalKvCacheValueType: 'F32',
      ...(lora ? { lora: { adapters: [lora] } } : {}),
    });
    try {
      const sequence = context.getSequence();
      const out = await sequence.controlledEvaluate(PROMPT.map((token) => [token as Token, { generateNext: { probabilities: true } }] as const));
      const result = new Float64Array(PROMPT.length * tinyLlama.vocab);
      PROMPT.forEach((_, i) => {
        const probabilities = out[i]?.next.probabilities;
        if (!probabilities) throw new Error(`no probabilities at position ${i}`);
        for (let v = 0; v < tinyLlama.vocab; v++) result[i * tinyLlama.vocab + v] = Math.log(probabilities.get(v as Token) ?? 0);
      });
      return result;
    } finally {
      await context.dispose();
    }
  } finally {
    await model.dispose();
  }
}

function maxDifference(a: Float64Array, b: Float64Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const x = a[i] as number;
    const y = b[i] as number;
    if (x < -40 && y < -40) continue; // both vanishingly unlikely: f32 softmax underflow territory
    worst = Math.max(worst, Math.abs(x - y));
  }
  return worst;
}

maybe('llama.cpp applies an eigenlorax GGUF LoRA exactly as eigenlorax merges it (log-probs within 1e-4)', async (t) => {
  const dir = await tempDir(t);
  const seed = 20260;
  const base = path.join(dir, 'tiny.gguf');
  await writeTinyLlama(base, seed);
  const adapter = tinyLlamaAdapter(seed + 1);
  const loraFile = path.join(dir, 'lora.gguf');
  await saveAdapter(adapter, loraFile, { format: 'gguf', gguf: { base } });
  const s = 0.7;
  const mergedFromFile = path.join(dir, 'merged-file.gguf');
  await mergeIntoBase({ base, adapters: [{ adapter: loraFile, weight: s }], output: mergedFromFile });
  const mergedFromHf = path.join(dir, 'merged-hf.gguf');
  const report = await mergeIntoBase({ base, adapters: [{ adapter, weight: s }], output: mergedFromHf });
  t.is(report.tensors.touched, 14);

  for (const file of [loraFile, mergedFromFile]) {
    const hf = await parseWithHuggingFace(file);
    await using ours = await openGguf(file);
    t.deepEqual(hf.tensorInfos.map((i) => i.name), [...ours.tensors.keys()], `${path.basename(file)} parsed by @huggingface/gguf`);
  }

  const withLora = await logProbs(base, { filePath: loraFile, scale: s });
  const merged = await logProbs(mergedFromFile);
  const mergedHf = await logProbs(mergedFromHf);
  const plain = await logProbs(base);
  const dFile = maxDifference(withLora, merged);
  const dHf = maxDifference(withLora, mergedHf);
  const dBase = maxDifference(withLora, plain);
  t.log(`max |log-prob difference|: LoRA vs merged GGUF adapter ${dFile.toExponential(2)}, vs merged HF adapter ${dHf.toExponential(2)}, vs base ${dBase.toFixed(2)}`);
  t.true(dFile < TOLERANCE, `llama.cpp + LoRA vs eigenlorax merge of the GGUF adapter: ${dFile}`);
  t.true(dHf < TOLERANCE, `llama.cpp + LoRA vs eigenlorax merge of the HF adapter: ${dHf}`);
  t.true(dBase > 0.1, `the adapter changes the model: ${dBase}`);
});
