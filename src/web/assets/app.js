// The page: reads /api/* (the cookie carries the token), then follows
// /api/events. Tables are paged: only one page of rows is ever in the DOM.
'use strict';
(function () {
  const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  // As the tools print sizes (src/cli/common/output.ts humanSize).
  function human(n) {
    if (n === null || n === undefined) return '-';
    let v = n, u = 0;
    while (Math.abs(v) >= 1024 && u < UNITS.length - 1) { v /= 1024; u++; }
    return u === 0 ? `${v} B` : `${v.toFixed(1)} ${UNITS[u]}`;
  }
  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  async function get(url) {
    const r = await fetch(url, { credentials: 'same-origin' });
    if (!r.ok) throw new Error(`${url}: ${r.status} ${await r.text()}`);
    return r.json();
  }
  function notice(text) {
    const n = el('div', null, `${new Date().toLocaleTimeString()}: ${text}`);
    $('notices').prepend(n);
    while ($('notices').children.length > 5) $('notices').lastChild.remove();
  }

  // ---- pools ----
  let pools = [];
  let threshold = 90;
  let selectedPool = null;
  function part(name, f, above) {
    const p = el('div', `part ${f.percent === null ? 'unknown' : above ? 'above' : 'ok'}`);
    p.dataset.part = name;
    const label = el('div', 'label');
    label.append(`${name} `, el('span', 'percent', f.percent === null ? '-' : `${f.percent.toFixed(1)}%`), ` ${human(f.usage)} of ${human(f.size)}`);
    const bar = el('div', 'bar');
    const fill = el('div', 'fill');
    fill.style.width = `${Math.min(100, f.percent ?? 0)}%`;
    // Where the threshold lies on the bar.
    const mark = el('div', 'mark');
    mark.style.left = `${threshold}%`;
    mark.title = `threshold ${threshold}%`;
    bar.append(fill);
    if (f.percent !== null) bar.append(mark);
    const bytes = el('div', 'bytes', `${f.usage ?? '-'} of ${f.size ?? '-'} bytes`);
    p.append(label, bar, bytes);
    return p;
  }
  function renderPools() {
    const box = $('pools');
    box.replaceChildren();
    for (const p of pools) {
      const card = el('div', `pool${p.name === selectedPool ? ' selected' : ''}`);
      card.dataset.pool = p.name;
      card.append(el('span', 'name', p.name), el('span', 'driver', p.driver));
      card.append(part('data', p.row.data, p.row.above.includes('data')));
      if (p.row.metadata) card.append(part('metadata', p.row.metadata, p.row.above.includes('metadata')));
      card.addEventListener('click', () => selectPool(p.name));
      box.append(card);
    }
    $('threshold-note').textContent = `threshold ${threshold}%`;
  }
  function setPools(reply) {
    pools = reply.pools;
    threshold = reply.threshold;
    if (selectedPool === null || !pools.some((p) => p.name === selectedPool)) selectedPool = pools[0] ? pools[0].name : null;
    renderPools();
  }

  // ---- history chart (uPlot) ----
  let history = {};
  let plot = null;
  function chartData() {
    const names = Object.keys(history).filter((n) => pools.some((p) => p.name === n));
    const times = [...new Set(names.flatMap((n) => history[n].map((pt) => Math.round(pt[0] / 1000))))].sort((a, b) => a - b);
    const index = new Map(times.map((t, i) => [t, i]));
    const series = names.map((n) => {
      const ys = new Array(times.length).fill(null);
      for (const [t, used, size] of history[n]) if (size) ys[index.get(Math.round(t / 1000))] = Math.round((used / size) * 1000) / 10;
      return ys;
    });
    return { names, data: [times, ...series] };
  }
  const COLOURS = ['#0969da', '#8250df', '#bf3989', '#1a7f37', '#9a6700', '#cf222e', '#57606a'];
  function renderChart() {
    const { names, data } = chartData();
    const key = names.join('\n');
    if (plot && plot.qsKey === key) return plot.setData(data);
    if (plot) plot.destroy();
    const width = Math.max(300, $('chart').clientWidth || 800);
    plot = new uPlot({
      width, height: 220,
      scales: { y: { range: [0, 100] } },
      series: [{}, ...names.map((n, i) => ({ label: n, stroke: COLOURS[i % COLOURS.length], spanGaps: true, value: (u, v) => (v === null ? '-' : `${v}%`) }))],
      axes: [{}, { values: (u, vals) => vals.map((v) => `${v}%`) }],
    }, data, $('chart'));
    plot.qsKey = key;
  }

  // ---- volumes of the selected pool, a page at a time ----
  const VOL_PAGE = 50;
  let volOffset = 0;
  let volTotal = 0;
  let volSeq = 0;
  async function loadVolumes() {
    const seq = ++volSeq;
    $('volumes-pool').textContent = selectedPool ?? '-';
    if (selectedPool === null) return;
    const page = await get(`/api/volumes?pool=${encodeURIComponent(selectedPool)}&offset=${volOffset}&limit=${VOL_PAGE}`);
    if (seq !== volSeq) return; // a newer request won
    volTotal = page.total;
    $('volumes-range').textContent = page.total ? `${page.offset + 1}-${page.offset + page.items.length} of ${page.total}` : 'none';
    const rows = page.items.map((v) => {
      const tr = el('tr');
      tr.dataset.volume = `${v.domain}:${v.volume}`;
      tr.append(el('td', null, v.domain), el('td', null, v.volume));
      if (v.error) {
        const td = el('td', 'error', v.error);
        td.colSpan = 3;
        tr.append(td);
      } else {
        const s = el('td', 'size', human(v.size)); s.title = `${v.size} bytes`;
        const u = el('td', 'usage', human(v.usage)); u.title = `${v.usage} bytes`;
        const when = (r) => (r.time ? `${r.id} (${new Date(r.time).toLocaleString()})` : r.id);
        const revs = el('td', 'revisions', v.revisions.length ? v.revisions.map(when).join(', ') : '-');
        revs.title = v.revisions.map((r) => `${r.id} ${r.time}`).join('\n');
        tr.append(s, u, revs);
      }
      return tr;
    });
    $('volumes').tBodies[0].replaceChildren(...rows);
  }
  function selectPool(name) {
    selectedPool = name;
    volOffset = 0;
    renderPools();
    loadVolumes().catch((e) => notice(e.message));
  }

  // ---- domains, a page at a time ----
  const DOM_PAGE = 100;
  let domOffset = 0;
  let domTotal = 0;
  let domSeq = 0;
  async function loadDomains() {
    const seq = ++domSeq;
    const q = $('domains-filter').value;
    const page = await get(`/api/domains?offset=${domOffset}&limit=${DOM_PAGE}&q=${encodeURIComponent(q)}`);
    if (seq !== domSeq) return;
    domTotal = page.total;
    $('domains-range').textContent = page.total ? `${page.offset + 1}-${page.offset + page.items.length} of ${page.total}` : 'none';
    const rows = page.items.map((d) => {
      const tr = el('tr');
      tr.dataset.domain = d.name;
      tr.append(el('td', 'name', d.name), el('td', 'class', d.klass), el('td', `state ${d.state}`, d.state), el('td', 'template', d.template || '-'), el('td', 'pools', d.pools.join(', ') || '-'));
      return tr;
    });
    $('domains').tBodies[0].replaceChildren(...rows);
  }
  function setDomainState(name, state) {
    for (const tr of $('domains').tBodies[0].rows) {
      if (tr.dataset.domain !== name) continue;
      const td = tr.querySelector('td.state');
      td.className = `state ${state}`;
      td.textContent = state;
    }
  }

  // ---- live updates ----
  let volumeReload = null;
  function follow() {
    const es = new EventSource('/api/events');
    es.onopen = () => { $('live').textContent = 'live'; $('live').className = 'live on'; };
    es.onerror = () => { $('live').textContent = 'reconnecting'; $('live').className = 'live off'; };
    es.addEventListener('daemon', (e) => {
      const d = JSON.parse(e.data);
      $('live').textContent = d.connected ? 'live' : 'qubesd unreachable';
      $('live').className = d.connected ? 'live on' : 'live off';
      notice(d.connected ? 'qubesd is back' : 'lost qubesd: reconnecting');
    });
    es.addEventListener('pools', (e) => { setPools(JSON.parse(e.data)); renderChart(); });
    es.addEventListener('domain', (e) => { const d = JSON.parse(e.data); setDomainState(d.name, d.state); });
    es.addEventListener('domains', () => loadDomains().catch((err) => notice(err.message)));
    es.addEventListener('volume', () => {
      clearTimeout(volumeReload);
      volumeReload = setTimeout(() => loadVolumes().catch((err) => notice(err.message)), 200);
    });
    es.addEventListener('threshold', (e) => {
      const t = JSON.parse(e.data);
      notice(`pool ${t.pool}: ${t.part} ${t.above ? 'above' : 'back below'} the threshold (${t.percent}% used, threshold ${t.threshold}%)`);
    });
    es.addEventListener('history', (e) => {
      const added = JSON.parse(e.data);
      for (const [pool, pt] of Object.entries(added)) {
        (history[pool] = history[pool] || []).push(pt);
        if (history[pool].length > 100000) history[pool].shift();
      }
      renderChart();
    });
  }

  async function start() {
    $('volumes-prev').addEventListener('click', () => { volOffset = Math.max(0, volOffset - VOL_PAGE); loadVolumes().catch((e) => notice(e.message)); });
    $('volumes-next').addEventListener('click', () => { if (volOffset + VOL_PAGE < volTotal) { volOffset += VOL_PAGE; loadVolumes().catch((e) => notice(e.message)); } });
    $('domains-prev').addEventListener('click', () => { domOffset = Math.max(0, domOffset - DOM_PAGE); loadDomains().catch((e) => notice(e.message)); });
    $('domains-next').addEventListener('click', () => { if (domOffset + DOM_PAGE < domTotal) { domOffset += DOM_PAGE; loadDomains().catch((e) => notice(e.message)); } });
    let filterTimer = null;
    $('domains-filter').addEventListener('input', () => {
      clearTimeout(filterTimer);
      filterTimer = setTimeout(() => { domOffset = 0; loadDomains().catch((e) => notice(e.message)); }, 150);
    });
    follow();
    const [p, h] = await Promise.all([get('/api/pools'), get('/api/history'), loadDomains()]);
    setPools(p);
    history = h.pools;
    renderChart();
    document.body.dataset.ready = 'true';
    await loadVolumes();
  }
  start().catch((e) => notice(e.message));
})();
