// Parse every .tf under a directory with HashiCorp's HCL parser and check `terraform fmt`'s
// canonical formatting; write the parsed files as one JSON object (file -> HCL as JSON).
const fs = require("fs");
const path = require("path");
const { parse } = require("@cdktf/hcl2json");
const { format } = require("@cdktf/hcl-tools");

function tfFiles(dir) {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return e.name === "check" || e.name.startsWith(".") ? [] : tfFiles(p);
    return e.name.endsWith(".tf") ? [p] : [];
  });
}

(async () => {
  const [root, out] = process.argv.slice(2);
  const files = tfFiles(root);
  const parsed = {};
  const problems = [];
  for (const f of files) {
    const text = fs.readFileSync(f, "utf8");
    try {
      parsed[f] = await parse(f, text);
    } catch (e) {
      problems.push(`${f}: does not parse: ${e.message || e}`);
      continue;
    }
    const canonical = await format(text);
    if (canonical !== text) problems.push(`${f}: not canonically formatted (terraform fmt)`);
  }
  fs.writeFileSync(out, JSON.stringify(parsed));
  if (problems.length) {
    console.error(problems.join("\n"));
    process.exit(1);
  }
  console.log(`hcl: ${files.length} files parse and are canonically formatted`);
})();
