/**
 * The method list of README.md, generated from the declarations in the
 * method table (method-shape.ts): one row per method. `npm run methods-doc`
 * (src/daemon/methods-doc.ts) writes it between the markers; a test fails
 * when the README differs from the table.
 */
import type { MethodTable } from './dispatch.js';
import { policyClass, type MethodShape } from './method-shape.js';

export const METHOD_LIST_BEGIN = '<!-- method list: generated from the method table by `npm run methods-doc`; do not edit -->';
export const METHOD_LIST_END = '<!-- end of method list -->';
/** The methods of the internal socket (internal.*), listed apart. */
export const INTERNAL_METHOD_LIST_BEGIN =
  '<!-- internal method list: generated from the internal method table by `npm run methods-doc`; do not edit -->';
export const INTERNAL_METHOD_LIST_END = '<!-- end of internal method list -->';

/** The markdown table of every method of `table`, sorted by name. */
export function renderMethodList(table: MethodTable): string {
  const rows = Object.keys(table)
    .sort()
    .map((name) => {
      const spec = table[name]!;
      const s = spec.shape;
      if (!s) return `| \`${name}\` | (not declared) | | | | |`;
      const kind = spec.kind === 'events' ? 'events' : spec.kind === 'reply-stream' ? 'none (reply streamed)' : s.payload;
      return `| \`${name}\` | ${argText(s)} | ${kind} | ${destText(s)} | ${s.scope} ${s.access} | ${policyClass(s)} |`;
    });
  return [
    '| method | argument | payload | destination | scope, access | policy class |',
    '|---|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}

function argText(s: MethodShape): string {
  return s.arg === 'none' ? 'none' : `${s.arg}: ${s.argNames}${s.checkArg ? ' (checked)' : ''}`;
}

function destText(s: MethodShape): string {
  if (s.dest === 'dom0') return s.lookupDest ? 'dom0' : 'dom0 (name only)';
  return s.dest;
}

/** `readme` with the text between the markers replaced by `list`; throws when a marker is missing. */
export function withMethodList(readme: string, list: string, markers: readonly [string, string] = [METHOD_LIST_BEGIN, METHOD_LIST_END]): string {
  const [open, close] = markers;
  const begin = readme.indexOf(open);
  const end = readme.indexOf(close);
  if (begin < 0 || end < begin) throw new Error(`README has no method list markers (${open} ... ${close})`);
  return `${readme.slice(0, begin + open.length)}\n${list}\n${readme.slice(end)}`;
}
