// Runs a wasm32-wasip1 program (a `cargo test` binary) under Node's built-in WASI, so that
// the core's tests run on the filter's real target without installing a Wasm runtime.
// Used as CARGO_TARGET_WASM32_WASIP1_RUNNER by `make wasm-test`.
import { readFile } from 'node:fs/promises';
import { WASI } from 'node:wasi';
import process from 'node:process';

const [, , wasmPath, ...args] = process.argv;
if (!wasmPath) {
  console.error('usage: node wasi-run.mjs PROGRAM.wasm [ARGS...]');
  process.exit(2);
}
const wasi = new WASI({
  version: 'preview1',
  args: [wasmPath, ...args],
  env: { RUST_BACKTRACE: '0' },
  preopens: { '.': process.cwd() },
  returnOnExit: true,
});
const module = await WebAssembly.compile(await readFile(wasmPath));
const instance = await WebAssembly.instantiate(module, wasi.getImportObject());
process.exit(wasi.start(instance) ?? 0);
