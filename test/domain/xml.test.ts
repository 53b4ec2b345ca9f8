// The lossless XML reader/writer: what it reads is written back byte for
// byte; edits change only what they touch; malformed input is refused with
// file, line and column.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import {
  attr,
  childElements,
  DeferredElement,
  firstChild,
  insertElement,
  newElement,
  parseXml,
  removeElement,
  serializeXml,
  setAttr,
  setText,
  StateFileError,
  textOf,
} from '../../src/domain/xml.js';

const ROUND_TRIP: Array<[string, string]> = [
  ['declaration, doctype and comments', `<?xml version="1.0"?>\n<!DOCTYPE qubes>\n<!-- a -->\n<qubes>\n  <!-- b -->\n</qubes>\n<!-- c -->\n`],
  ['single quotes and odd spacing', `<a x='1'   y = "2"\n   z="3" ><b\tq="&quot;&amp;&lt;"/></a >`],
  ['entities and character references', `<a t="&#10;&#x41;">&lt;x&gt; &amp; &apos;&quot; &#233;</a>`],
  ['CDATA and processing instructions', `<a><![CDATA[<raw> & ]]><?pi data?></a>`],
  ['CRLF line ends', `<a>\r\n  <b/>\r\n</a>\r\n`],
  ['a byte order mark', `\uFEFF<a/>`],
  ['non-ASCII names and text', `<données clé="é">ünïcödé ✓</données>`],
  ['every kind of name character', `<_a-b.c:d\u00B79 x-y.z_0:1="v" \u00C0\uFFFF="w"><\u00C0-\uFFFF.1/></_a-b.c:d\u00B79>`],
];

const MALFORMED: Array<[string, string, string]> = [
  ['unclosed element', `<a>\n  <b>\n</a>`, ':3:1: malformed XML: end tag </a> does not match <b> of line 2'],
  ['never closed', `<a>\n<b/>`, ':2:5: malformed XML: <a> of line 1 is never closed'],
  ['unknown entity', `<a>\n x &nbsp; y</a>`, ':2:4: malformed XML: unknown entity'],
  ['bare ampersand', `<a>fish & chips</a>`, ':1:9: malformed XML: \'&\' not followed by an entity reference'],
  ['duplicate attribute', `<a x="1" x="2"/>`, 'attribute x given twice'],
  ['unquoted attribute', `<a x=1/>`, ':1:6: malformed XML: expected a quoted value for attribute x'],
  ['two roots', `<a/><b/>`, ':1:5: malformed XML: more than one root element'],
  ['text outside', `<a/>junk`, 'text outside the root element'],
  ['no root', `<!-- only -->`, 'no root element'],
  ['internal subset', `<!DOCTYPE a [<!ENTITY x "y">]><a/>`, 'DOCTYPE with an internal subset is not accepted'],
  ['too deep', '<a>'.repeat(300) + '</a>'.repeat(300), 'nested deeper than 256'],
  ['lt in attribute', `<a x="<"/>`, `'<' in the value of attribute x`],
  ['a name starting with a digit', `<a>\n<1b/></a>`, ':2:2: malformed XML: expected a name'],
  ['a name starting with -', `<a -x="1"/>`, ':1:4: malformed XML: expected a name'],
  ['a name starting with .', `<a>\n</.a></a>`, ':2:3: malformed XML: expected a name'],
  ['a name starting with \u00B7', `<\u00B7a/>`, ':1:2: malformed XML: expected a name'],
];

describe('xml', () => {
  for (const [title, text] of ROUND_TRIP) {
    it(`writes back unchanged: ${title}`, () => {
      assert.equal(serializeXml(parseXml(text, 'f.xml')), text);
    });
  }

  for (const [title, text, message] of MALFORMED) {
    it(`refuses ${title}`, () => {
      assert.throws(
        () => parseXml(text, 'f.xml'),
        (e: unknown) => {
          assert.ok(e instanceof StateFileError);
          assert.ok((e as Error).message.startsWith('f.xml:'), (e as Error).message);
          assert.ok((e as Error).message.includes(message), `${(e as Error).message} should include ${message}`);
          return true;
        },
      );
    });
  }

  it('decodes values and text', () => {
    const doc = parseXml(`<a t="x&#10;y &amp; z"> &lt;b&gt; <![CDATA[c&d]]></a>`, 'f');
    assert.equal(attr(doc.root, 't'), 'x\ny & z');
    assert.equal(textOf(doc.root), ' <b> c&d');
  });

  it('changes only what an edit touches, escaping like lxml', () => {
    const doc = parseXml(`<r>\n  <p a='1' b="&#65;">old</p>\n  <q/>\n</r>\n`, 'f');
    const p = firstChild(doc.root, 'p')!;
    setAttr(p, 'b', 'A'); // same value: spelling kept
    setAttr(p, 'a', '<2 "x">');
    setText(p, 'new & <improved>');
    assert.equal(serializeXml(doc), `<r>\n  <p a='&lt;2 &quot;x&quot;&gt;' b="&#65;">new &amp; &lt;improved&gt;</p>\n  <q/>\n</r>\n`);
  });

  it('inserts with the siblings indentation and removes with the whitespace before', () => {
    const doc = parseXml(`<r>\n  <s>\n    <i n="1"/>\n    <i n="3"/>\n  </s>\n  <e/>\n</r>\n`, 'f');
    const s = firstChild(doc.root, 's')!;
    insertElement(s, newElement('i', { n: '2' }), childElements(s)[1]!, '  ', '  ');
    insertElement(s, newElement('i', { n: '4' }), null, '  ', '  ');
    const e = firstChild(doc.root, 'e')!;
    const nested = newElement('x');
    nested.children.push(newElement('y', {}, 'v'));
    insertElement(e, nested, null, '  ', '  ');
    assert.equal(
      serializeXml(doc),
      `<r>\n  <s>\n    <i n="1"/>\n    <i n="2"/>\n    <i n="3"/>\n    <i n="4"/>\n  </s>\n  <e>\n    <x>\n      <y>v</y>\n    </x>\n  </e>\n</r>\n`,
    );
    for (const i of childElements(s)) removeElement(s, i);
    removeElement(e, nested);
    assert.equal(serializeXml(doc), `<r>\n  <s/>\n  <e/>\n</r>\n`);
  });

  it('keeps elements handed to the kept hook as DeferredElements: read back on demand, same text, lines and edits', () => {
    const text = `<r>\n  <s>\n    <d id='1'  k="&amp;x">\n      <p n="a">one</p>\n      <q/>\n    </d >\n    <d id="2"/>\n  </s>\n</r>\n`;
    const seen: string[] = [];
    const doc = parseXml(text, 'f.xml', 2, {
      kept(el, parent) {
        seen.push(`${parent.name}/${el.name}@${el.line}:${attr(el, 'id')}:${el.children.length}`);
        return new DeferredElement(el.name, el.line, el.src, 'f.xml');
      },
    });
    // The hook saw the whole element (attributes decoded, its children) before it was replaced.
    assert.deepEqual(seen, ['s/d@3:1:5', 's/d@7:2:0']);
    const [d1, d2] = childElements(firstChild(doc.root, 's')!, 'd') as DeferredElement[];
    assert.ok(d1 instanceof DeferredElement && d2 instanceof DeferredElement);
    assert.equal(serializeXml(doc), text, 'written back byte for byte without being read again');
    // Looking inside reads it again, with the lines it has in the whole text.
    const p = firstChild(d1, 'p')!;
    assert.equal(textOf(p), 'one');
    assert.equal(p.line, 4);
    assert.equal(firstChild(d1, 'q')!.line, 5);
    assert.equal(attr(d1, 'k'), '&x');
    // An edit inside (the caller clears the kept text, as state-file.ts does): written from the tree.
    setText(p, 'two');
    setAttr(d2, 'id', '3');
    d1.src = undefined;
    d2.src = undefined;
    assert.equal(serializeXml(doc), `<r>\n  <s>\n    <d id='1'  k="&amp;x">\n      <p n="a">two</p>\n      <q/>\n    </d >\n    <d id="3"/>\n  </s>\n</r>\n`);
  });
});
