/**
 * A small lossless XML reader and writer for the state file. The tree keeps
 * everything needed to write the input back byte for byte: the whitespace
 * between nodes, each attribute's quote character, spacing and original
 * (escaped) spelling, comments, processing instructions, CDATA sections and
 * the DOCTYPE as written. A value that is changed is written escaped the way
 * lxml does (`&amp; &lt; &gt;` in text, plus `&quot;` and control characters
 * as character references in attributes).
 *
 * Deliberate limits: no DTD processing (a DOCTYPE with an internal subset is
 * refused, so no entity can expand), only the five predefined entities and
 * character references, at most MAX_DEPTH nested elements. Errors name the
 * file, line and column.
 */
import { QubesException } from '../storage/errors.js';

/** Malformed or unacceptable state file content. The message starts with FILE:LINE:COL. */
export class StateFileError extends QubesException {}

export const MAX_DEPTH = 256;

export interface XAttr {
  name: string;
  /** Decoded value. */
  value: string;
  /** The value as written between the quotes; null once changed (then written escaped). */
  raw: string | null;
  quote: '"' | "'";
  /** Whitespace before the name. */
  before: string;
  /** What stands between the name and the opening quote (normally `=`). */
  eq: string;
}

export interface XText {
  kind: 'text';
  value: string;
  raw: string | null;
}

/** Comment, processing instruction, CDATA section or DOCTYPE, kept verbatim. */
export interface XRaw {
  kind: 'raw';
  raw: string;
  /** For CDATA: its content (part of the element's text). */
  cdata?: string;
}

export interface XElement {
  kind: 'element';
  name: string;
  attrs: XAttr[];
  children: XNode[];
  selfClosing: boolean;
  /** Whitespace after the last attribute, before `>` or `/>`. */
  openTail: string;
  /** Whitespace after the name in the end tag. */
  closeTail: string;
  /** 1-based line of the start tag (0 for elements made in memory). */
  line: number;
  /**
   * The element exactly as it is written, when known: kept by the parser for
   * elements at `keepSourceDepth`, and by whoever serialised it. Writing
   * uses it instead of walking the subtree. Whoever changes the subtree must
   * clear it (see `mutations`).
   */
  src?: string | undefined;
}

export type XNode = XElement | XText | XRaw;

export interface XDocument {
  /** Everything at top level, the root element included, in order. */
  nodes: XNode[];
  root: XElement;
  /** For messages. */
  file: string;
}

// ---- reading -----------------------------------------------------------------

/**
 * Name characters, by UTF-16 code unit: `[A-Za-z_:\u00C0-\uFFFF]` first, then
 * also `[-0-9.\u00B7]`. Tested one unit at a time (a regular expression's
 * match would be one more object per name: 600,000 for 10,000 domains).
 */
function isNameStart(c: number): boolean {
  return (c >= 97 && c <= 122) || (c >= 65 && c <= 90) || c === 95 || c === 58 || (c >= 0xc0 && c <= 0xffff);
}
function isNameChar(c: number): boolean {
  return isNameStart(c) || (c >= 48 && c <= 57) || c === 45 || c === 46 || c === 0xb7;
}
const PREDEFINED: Record<string, string> = { lt: '<', gt: '>', amp: '&', quot: '"', apos: "'" };

class Reader {
  pos = 0;
  private lineStarts: number[] | null = null;
  constructor(
    readonly text: string,
    readonly file: string,
    /** The line the text starts on (a piece of a bigger file: see DeferredElement). */
    private readonly firstLine = 1,
  ) {
    this.lineCount = { pos: 0, line: firstLine };
  }

  private lineCount: { pos: number; line: number };

  /** The line of `pos`, for positions met in increasing order (elements as parsed): counts newlines since the last one. */
  lineAtForward(pos: number): number {
    const c = this.lineCount;
    if (pos < c.pos) return this.lineCol(pos)[0];
    let i = this.text.indexOf('\n', c.pos);
    while (i >= 0 && i < pos) {
      c.line++;
      i = this.text.indexOf('\n', i + 1);
    }
    c.pos = pos;
    return c.line;
  }

  lineCol(pos: number): [number, number] {
    if (!this.lineStarts) {
      this.lineStarts = [0];
      for (let i = 0; i < this.text.length; i++) if (this.text.charCodeAt(i) === 10) this.lineStarts.push(i + 1);
    }
    let lo = 0;
    let hi = this.lineStarts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.lineStarts[mid]! <= pos) lo = mid;
      else hi = mid - 1;
    }
    return [lo + this.firstLine, pos - this.lineStarts[lo]! + 1];
  }

  fail(what: string, at = this.pos): never {
    const [line, col] = this.lineCol(at);
    throw new StateFileError(`${this.file}:${line}:${col}: malformed XML: ${what}`);
  }

  startsWith(s: string): boolean {
    return this.text.startsWith(s, this.pos);
  }

  ws(): string {
    const start = this.pos;
    const t = this.text;
    for (;;) {
      const c = t.charCodeAt(this.pos);
      if (c !== 32 && c !== 10 && c !== 9 && c !== 13) break;
      this.pos++;
    }
    return start === this.pos ? '' : t.slice(start, this.pos);
  }

  name(): string {
    const t = this.text;
    const start = this.pos;
    if (!isNameStart(t.charCodeAt(start))) return this.fail('expected a name');
    let i = start + 1;
    while (isNameChar(t.charCodeAt(i))) i++;
    this.pos = i;
    return t.slice(start, i);
  }

  until(end: string, what: string): string {
    const i = this.text.indexOf(end, this.pos);
    if (i < 0) this.fail(`unterminated ${what}`);
    const s = this.text.slice(this.pos, i);
    this.pos = i + end.length;
    return s;
  }

  decode(raw: string, at: number): string {
    if (!raw.includes('&')) return raw;
    return raw.replace(/&([^;&<]{0,16});?/g, (m, body: string, off: number) => {
      if (!m.endsWith(';')) this.fail(`'&' not followed by an entity reference`, at + off);
      if (body in PREDEFINED) return PREDEFINED[body]!;
      let code = NaN;
      if (/^#[0-9]{1,7}$/.test(body)) code = Number(body.slice(1));
      else if (/^#x[0-9A-Fa-f]{1,6}$/.test(body)) code = parseInt(body.slice(2), 16);
      else this.fail(`unknown entity '&${body};' (only &lt; &gt; &amp; &quot; &apos; and character references)`, at + off);
      if (code === 0 || code > 0x10ffff || (code >= 0xd800 && code <= 0xdfff)) this.fail(`invalid character reference '&${body};'`, at + off);
      return String.fromCodePoint(code);
    });
  }
}

export interface ParseHooks {
  /**
   * Called with each element at `keepSourceDepth` once it is complete (its
   * `src` set) and its parent; what it returns takes the element's place in
   * the tree: a DeferredElement lets the subtree be collected at once
   * instead of being kept (and promoted by the garbage collector) for the
   * whole document.
   */
  kept?: (el: XElement, parent: XElement) => XElement;
  /** The line the text starts on (default 1). */
  firstLine?: number;
}

/**
 * Reads a whole document; throws StateFileError naming file, line and column.
 * Elements at depth `keepSourceDepth` (the root is depth 0) keep their source
 * text in `src`, so writing them back unchanged costs a string copy.
 */
export function parseXml(text: string, file: string, keepSourceDepth = -1, hooks: ParseHooks = {}): XDocument {
  const r: Reader = new Reader(text, file, hooks.firstLine);
  const nodes: XNode[] = [];
  let root: XElement | null = null;
  const stack: XElement[] = [];
  /** Where each open element's start tag began. */
  const starts: number[] = [];
  const add = (n: XNode): void => {
    if (stack.length) stack[stack.length - 1]!.children.push(n);
    else nodes.push(n);
  };
  const kept = hooks.kept;
  /** Hands a complete element at keepSourceDepth to the hook, putting what it returns in its place (the parent's last child). */
  const handOver = (el: XElement): void => {
    const parent = stack[stack.length - 1];
    if (!kept || !parent) return;
    const other = kept(el, parent);
    if (other !== el) parent.children[parent.children.length - 1] = other;
  };

  while (r.pos < text.length) {
    const start = r.pos;
    if (text[r.pos] !== '<') {
      const i = text.indexOf('<', r.pos);
      const end = i < 0 ? text.length : i;
      const raw = text.slice(r.pos, end);
      r.pos = end;
      if (!stack.length && raw.trim() !== '') r.fail('text outside the root element', start);
      if (raw.includes(']]>')) r.fail(`']]>' in text`, start + raw.indexOf(']]>'));
      add({ kind: 'text', value: r.decode(raw, start), raw });
      continue;
    }
    if (r.startsWith('<!--')) {
      r.pos += 4;
      const body = r.until('-->', 'comment');
      if (body.includes('--')) r.fail(`'--' inside a comment`, start);
      add({ kind: 'raw', raw: `<!--${body}-->` });
    } else if (r.startsWith('<![CDATA[')) {
      if (!stack.length) r.fail('CDATA outside the root element', start);
      r.pos += 9;
      const body = r.until(']]>', 'CDATA section');
      add({ kind: 'raw', raw: `<![CDATA[${body}]]>`, cdata: body });
    } else if (r.startsWith('<?')) {
      r.pos += 2;
      const body = r.until('?>', 'processing instruction');
      add({ kind: 'raw', raw: `<?${body}?>` });
    } else if (r.startsWith('<!DOCTYPE')) {
      if (stack.length || root) r.fail('DOCTYPE in the wrong place', start);
      const end = text.indexOf('>', r.pos);
      if (end < 0) r.fail('unterminated DOCTYPE', start);
      const body = text.slice(r.pos, end + 1);
      if (body.includes('[')) r.fail('DOCTYPE with an internal subset is not accepted', start);
      r.pos = end + 1;
      add({ kind: 'raw', raw: body });
    } else if (r.startsWith('</')) {
      r.pos += 2;
      const name = r.name();
      const tail = r.ws();
      if (text[r.pos] !== '>') r.fail(`expected '>' to end </${name}`);
      r.pos++;
      const open = stack.pop();
      if (!open) r.fail(`end tag </${name}> without a start tag`, start);
      if (open.name !== name) r.fail(`end tag </${name}> does not match <${open.name}> of line ${open.line}`, start);
      open.closeTail = tail;
      const from = starts.pop()!;
      if (stack.length === keepSourceDepth) {
        open.src = text.slice(from, r.pos);
        handOver(open);
      }
    } else {
      r.pos++;
      const name = r.name();
      const el: XElement = {
        kind: 'element',
        name,
        attrs: [],
        children: [],
        selfClosing: false,
        openTail: '',
        closeTail: '',
        line: r.lineAtForward(start),
      };
      for (;;) {
        const before = r.ws();
        if (r.startsWith('/>')) {
          r.pos += 2;
          el.openTail = before;
          el.selfClosing = true;
          break;
        }
        if (r.startsWith('>')) {
          r.pos += 1;
          el.openTail = before;
          break;
        }
        if (r.pos >= text.length) r.fail(`unterminated start tag <${name}`, start);
        if (before === '') r.fail('expected whitespace before an attribute');
        const aname = r.name();
        const eqStart = r.pos;
        r.ws();
        if (text[r.pos] !== '=') r.fail(`expected '=' after attribute ${aname}`);
        r.pos++;
        r.ws();
        const eq = text.slice(eqStart, r.pos);
        const q = text[r.pos];
        if (q !== '"' && q !== "'") return r.fail(`expected a quoted value for attribute ${aname}`);
        r.pos++;
        const vstart = r.pos;
        const end = text.indexOf(q, r.pos);
        if (end < 0) r.fail(`unterminated value of attribute ${aname}`, vstart);
        const raw = text.slice(vstart, end);
        if (raw.includes('<')) r.fail(`'<' in the value of attribute ${aname}`, vstart + raw.indexOf('<'));
        r.pos = end + 1;
        for (const a of el.attrs) if (a.name === aname) r.fail(`attribute ${aname} given twice`, eqStart - aname.length);
        // Attribute value normalisation (XML 1.0 3.3.3): literal whitespace becomes a space.
        const value = r.decode(/[\t\n\r]/.test(raw) ? raw.replace(/\r\n|[\t\n\r]/g, ' ') : raw, vstart);
        el.attrs.push({ name: aname, value, raw, quote: q, before, eq });
      }
      if (!stack.length) {
        if (root) r.fail('more than one root element', start);
        root = el;
      }
      add(el);
      if (el.selfClosing && stack.length === keepSourceDepth) {
        el.src = text.slice(start, r.pos);
        handOver(el);
      }
      if (!el.selfClosing) {
        starts.push(start);
        if (stack.length >= MAX_DEPTH) r.fail(`elements nested deeper than ${MAX_DEPTH}`, start);
        stack.push(el);
      }
    }
  }
  if (stack.length) r.fail(`<${stack[stack.length - 1]!.name}> of line ${stack[stack.length - 1]!.line} is never closed`, text.length);
  if (!root) r.fail('no root element', 0);
  return { nodes, root, file };
}

/**
 * An element kept as its source text only (name, line and `src`), parsed
 * into a tree the first time anything looks inside it. The state file's
 * 10,000 domain elements are read once at load (ParseHooks.kept) and then
 * mostly written back unchanged from `src`: keeping their trees cost most of
 * the load's garbage collection and a large part of the heap.
 */
export class DeferredElement implements XElement {
  readonly kind = 'element';
  private tree: XElement | null = null;
  constructor(
    readonly name: string,
    readonly line: number,
    public src: string | undefined,
    private readonly file: string,
  ) {}

  private get parsed(): XElement {
    if (this.tree) return this.tree;
    // Well-formed: it was parsed once already, as part of the whole document.
    const root = parseXml(this.src!, this.file, -1, { firstLine: this.line }).root;
    if (root.name !== this.name) throw new StateFileError(`${this.file}:${this.line}: internal: <${this.name}> reads back as <${root.name}>`);
    this.tree = root;
    return root;
  }
  get attrs(): XAttr[] {
    return this.parsed.attrs;
  }
  set attrs(v: XAttr[]) {
    this.parsed.attrs = v;
  }
  get children(): XNode[] {
    return this.parsed.children;
  }
  set children(v: XNode[]) {
    this.parsed.children = v;
  }
  get selfClosing(): boolean {
    return this.parsed.selfClosing;
  }
  set selfClosing(v: boolean) {
    this.parsed.selfClosing = v;
  }
  get openTail(): string {
    return this.parsed.openTail;
  }
  set openTail(v: string) {
    this.parsed.openTail = v;
  }
  get closeTail(): string {
    return this.parsed.closeTail;
  }
  set closeTail(v: string) {
    this.parsed.closeTail = v;
  }
}

// ---- writing -----------------------------------------------------------------

export function escapeText(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/\r/g, '&#13;');
}

export function escapeAttr(s: string): string {
  return s
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/\n/g, '&#10;')
    .replace(/\r/g, '&#13;')
    .replace(/\t/g, '&#9;');
}

function writeNode(n: XNode, out: string[]): void {
  if (n.kind === 'element' && n.src !== undefined) {
    out.push(n.src);
  } else if (n.kind === 'text') {
    out.push(n.raw ?? escapeText(n.value));
  } else if (n.kind === 'raw') {
    out.push(n.raw);
  } else {
    out.push('<', n.name);
    for (const a of n.attrs) {
      const v = a.raw ?? (a.quote === '"' ? escapeAttr(a.value) : escapeAttr(a.value).replace(/'/g, '&apos;'));
      out.push(a.before, a.name, a.eq, a.quote, v, a.quote);
    }
    out.push(n.openTail);
    if (n.selfClosing && n.children.length === 0) {
      out.push('/>');
      return;
    }
    out.push('>');
    for (const c of n.children) writeNode(c, out);
    out.push('</', n.name, n.closeTail, '>');
  }
}

export function serializeXml(doc: XDocument): string {
  const out: string[] = [];
  for (const n of doc.nodes) writeNode(n, out);
  return out.join('');
}

/** One element as written (its `src` when known). */
export function serializeElement(el: XElement): string {
  if (el.src !== undefined) return el.src;
  const out: string[] = [];
  writeNode(el, out);
  return out.join('');
}

/**
 * How many changes the editing helpers below have made, ever. A caller that
 * keeps `src` of an element compares this before and after editing inside
 * it: the helpers do not know the element's ancestors, so cannot clear
 * their `src` themselves.
 */
export let mutations = 0;

// ---- reading helpers -------------------------------------------------------------

export function attr(el: XElement, name: string): string | undefined {
  return el.attrs.find((a) => a.name === name)?.value;
}

export function childElements(el: XElement, name?: string): XElement[] {
  return el.children.filter((c): c is XElement => c.kind === 'element' && (name === undefined || c.name === name));
}

export function firstChild(el: XElement, name: string): XElement | undefined {
  for (const c of el.children) if (c.kind === 'element' && c.name === name) return c;
  return undefined;
}

/** The element's text: its text nodes and CDATA contents (child elements ignored). */
export function textOf(el: XElement): string {
  let s = '';
  for (const c of el.children) {
    if (c.kind === 'text') s += c.value;
    else if (c.kind === 'raw' && c.cdata !== undefined) s += c.cdata;
  }
  return s;
}

// ---- editing helpers ---------------------------------------------------------------

export function newElement(name: string, attrs: Record<string, string> = {}, text?: string): XElement {
  return {
    kind: 'element',
    name,
    attrs: Object.entries(attrs).map(([n, v]) => ({ name: n, value: v, raw: null, quote: '"', before: ' ', eq: '=' })),
    children: text === undefined ? [] : text === '' ? [] : [{ kind: 'text', value: text, raw: null }],
    selfClosing: text === undefined,
    openTail: '',
    closeTail: '',
    line: 0,
  };
}

/** Sets (or, with null, removes) an attribute; unchanged values keep their spelling. */
export function setAttr(el: XElement, name: string, value: string | null): void {
  const i = el.attrs.findIndex((a) => a.name === name);
  if (value === null) {
    if (i >= 0) {
      el.attrs.splice(i, 1);
      changed(el);
    }
    return;
  }
  if (i >= 0) {
    const a = el.attrs[i]!;
    if (a.value !== value) {
      a.value = value;
      a.raw = null;
      changed(el);
    }
  } else {
    el.attrs.push({ name, value, raw: null, quote: '"', before: ' ', eq: '=' });
    changed(el);
  }
}

function changed(el: XElement): void {
  el.src = undefined;
  mutations++;
}

/** Replaces the element's content with `value` (no-op when equal). */
export function setText(el: XElement, value: string): void {
  if (textOf(el) === value && !el.children.some((c) => c.kind === 'element')) return;
  el.children = value === '' ? [] : [{ kind: 'text', value, raw: null }];
  el.selfClosing = false;
  changed(el);
}

function isWs(n: XNode | undefined): n is XText {
  return n !== undefined && n.kind === 'text' && n.value.trim() === '';
}

/** The indentation (spaces after the last newline) of the whitespace before `el` in `parent`. */
function indentBefore(parent: XElement, el: XElement): string | null {
  const i = parent.children.indexOf(el);
  const prev = parent.children[i - 1];
  if (!isWs(prev)) return null;
  const nl = prev.value.lastIndexOf('\n');
  return nl < 0 ? null : prev.value.slice(nl + 1);
}

/** Guesses one level of indentation from the document (two spaces when it cannot tell). */
export function indentUnit(doc: XDocument): string {
  const first = childElements(doc.root)[0];
  return (first && indentBefore(doc.root, first)) || '  ';
}

/**
 * Inserts `child` into `parent` before `before` (null: after the last element
 * child), with the indentation its siblings have (or parent's plus `unit`).
 * A freshly built `child` with element children is indented too.
 */
export function insertElement(parent: XElement, child: XElement, before: XElement | null, parentIndent: string, unit: string): void {
  changed(parent);
  const elems = childElements(parent);
  let sep: string;
  if (elems.length) {
    const ref: XElement = before ?? elems[elems.length - 1]!;
    sep = '\n' + (indentBefore(parent, ref) ?? parentIndent + unit);
  } else {
    sep = '\n' + parentIndent + unit;
  }
  const ind = sep.slice(1);
  indentTree(child, ind, unit);
  if (!elems.length) {
    // Empty (or self-closing, or whitespace-only) parent: give it a body.
    parent.children = parent.children.filter((c) => !isWs(c));
    parent.children.push({ kind: 'text', value: sep, raw: null }, child, { kind: 'text', value: '\n' + parentIndent, raw: null });
    parent.selfClosing = false;
    return;
  }
  if (before) {
    const i = parent.children.indexOf(before);
    // [ws][before] -> [ws][child][ws'][before]
    parent.children.splice(i, 0, child, { kind: 'text', value: sep, raw: null });
  } else {
    const last = elems[elems.length - 1]!;
    const i = parent.children.indexOf(last);
    parent.children.splice(i + 1, 0, { kind: 'text', value: sep, raw: null }, child);
  }
}

/** Adds line breaks and indentation inside an element built in memory (no whitespace nodes yet). */
function indentTree(el: XElement, indent: string, unit: string): void {
  const elems = el.children.filter((c) => c.kind === 'element') as XElement[];
  if (!elems.length || el.children.some((c) => c.kind === 'text')) return;
  const inner = indent + unit;
  const out: XNode[] = [];
  for (const c of el.children) {
    out.push({ kind: 'text', value: '\n' + inner, raw: null }, c);
    if (c.kind === 'element') indentTree(c, inner, unit);
  }
  out.push({ kind: 'text', value: '\n' + indent, raw: null });
  el.children = out;
  el.selfClosing = false;
}

/** Removes `child` and the whitespace before it; an element left empty becomes `<x/>`. */
export function removeElement(parent: XElement, child: XElement): void {
  const i = parent.children.indexOf(child);
  if (i < 0) return;
  changed(parent);
  const prev = parent.children[i - 1];
  if (isWs(prev)) parent.children.splice(i - 1, 2);
  else parent.children.splice(i, 1);
  if (parent.children.every((c) => isWs(c))) {
    parent.children = [];
    parent.selfClosing = true;
  }
}

/** The indentation of `el` itself (given its parent), for inserting into it. */
export function indentOf(parent: XElement | null, el: XElement): string {
  if (!parent) return '';
  return indentBefore(parent, el) ?? '';
}
