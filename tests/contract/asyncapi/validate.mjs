import { Parser, fromFile } from '@asyncapi/parser';
const parser = new Parser();
const path = process.argv[2];
const { document, diagnostics } = await fromFile(parser, path).parse();
for (const d of diagnostics) console.log(d.severity, d.code, d.path.join('.'), d.message);
console.log(document ? 'parsed' : 'NOT PARSED');
process.exit(!document || diagnostics.some(d => d.severity === 0) ? 1 : 0);
