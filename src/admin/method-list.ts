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

/** The markdown table of every method of `table`, sorted by name. */
export function renderMethodList(table: MethodTable): string {
  const rows = Object.keys(table)
    .sort()
    .map((name) => {
      const spec = table[name]!;
      const s = spec.shape;
      if (!s) return `| \`${name}\` | (not declared) | | | | |`;
      const kind = spec.kind === 'events' ? 'events' : s.payload;
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
export function withMethodList(readme: string, list: string): string {
  const begin = readme.indexOf(METHOD_LIST_BEGIN);
  const end = readme.indexOf(METHOD_LIST_END);
  if (begin < 0 || end < begin) throw new Error(`README has no method list markers (${METHOD_LIST_BEGIN} ... ${METHOD_LIST_END})`);
  return `${readme.slice(0, begin + METHOD_LIST_BEGIN.length)}\n${list}\n${readme.slice(end)}`;
}
