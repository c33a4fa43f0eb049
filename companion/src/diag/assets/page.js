// gatelet diagnostics page: redraws the server-rendered sections from /status.json every few
// seconds (the `view` the server rendered them from), draws the last hour as inline SVG, and
// sends the action buttons' forms without leaving the page. No library, nothing fetched but
// this page's own JSON.
'use strict';
(function () {
  var POLL_MS = 5000, STALE_MS = 15000;
  document.documentElement.className = 'js';
  var csrf = document.body.dataset.csrf || '', got = Date.now(), err = '';
  var $ = function (id) { return document.getElementById(id); };
  function esc(s) {
    return String(s).replace(/[<>&"']/g, function (c) {
      return { '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&#39;' }[c];
    });
  }
  function ago(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 120) return s + ' s ago';
    if (s < 7200) return Math.floor(s / 60) + ' min ago';
    if (s < 172800) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }
  function bytes(n) {
    var u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'], i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return i ? n.toFixed(1) + ' ' + u[i] : n + ' B';
  }
  function rows(rs, now) {
    return '<dl>' + rs.map(function (r) {
      var v = esc(r.value);
      if (r.at_ms != null) v = v.replace('{ago}', ago(now - r.at_ms));
      return '<dt>' + esc(r.label) + '</dt><dd class="' + r.tone + '">' + v + '</dd>';
    }).join('') + '</dl>';
  }
  function tone(w) {
    return { listening: 'good', up: 'good', failed: 'bad', down: 'bad', 'not served': 'warn' }[w] || '';
  }
  function button(action, fields, label) {
    var h = '<input type="hidden" name="csrf" value="' + esc(csrf) + '">';
    for (var k in fields) h += '<input type="hidden" name="' + k + '" value="' + esc(fields[k]) + '">';
    return '<form method="post" action="' + action + '" class="act">' + h + '<button>' + esc(label) + '</button></form>';
  }
  function small(s) { return s == null ? '' : ' <small>' + esc(s) + '</small>'; }
  function routes(v) {
    if (!v.routes.length) return '<p>No routes in force.</p>';
    return '<table><thead><tr><th>Route</th><th>Listener</th><th>Target</th><th>Open</th><th>Bytes</th><th></th></tr></thead><tbody>' +
      v.routes.map(function (r) {
        var a = '';
        // Egress routes have no probe or wake (and their ids are not the routes' ids).
        if (v.can_act && r.kind !== 'egress') {
          if (r.wol) a += button('/action/wake', { route_id: r.id }, 'Wake');
          a += button('/action/probe', { route_id: r.id }, 'Re-probe');
        }
        return '<tr data-id="' + r.id + '"><td data-l="Route"><b>' + esc(r.name) + '</b><br><small>' + r.kind + ' to ' + esc(r.target) +
          '</small></td><td data-l="Listener"><span class="pill ' + tone(r.listener) + '">' + r.listener + '</span>' + small(r.reason) +
          '</td><td data-l="Target"><span class="pill ' + tone(r.target_state) + '">' + r.target_state + '</span>' + small(r.target_detail) +
          '</td><td data-l="Open">' + r.connections + '</td><td data-l="Bytes">' + bytes(r.bytes) + '</td><td data-l="">' + a + '</td></tr>';
      }).join('') + '</tbody></table>';
  }
  function rejected(v) {
    if (!v.rejected.length) return '';
    return '<h3>Rejected routes</h3><ul class="rej">' + v.rejected.map(function (r) {
      return '<li><b>' + esc(r.kind) + ' #' + (r.id == null ? '?' : r.id) + '</b>: ' + esc(r.reason) + '</li>';
    }).join('') + '</ul>';
  }
  function events(v) {
    if (!v.events.length) return '<p>No events yet.</p>';
    return '<ol>' + v.events.map(function (e) {
      return '<li><time>' + ago(v.now_ms - e.at_ms) + '</time> <span class="k">' + esc(e.kind) + '</span> ' + esc(e.detail) +
        (e.count > 1 ? ' <small>\u00d7' + e.count + '</small>' : '') + '</li>';
    }).join('') + '</ol>';
  }
  // One chart: series of [value or null] aligned with t, over the last hour up to now.
  function chart(title, t, series, now, unit) {
    var W = 300, H = 90, L = 34, B = 14, span = 3600000, max = 0;
    series.forEach(function (s) { s.v.forEach(function (x) { if (x != null && x > max) max = x; }); });
    var top = max > 0 ? max * 1.1 : 1;
    var x = function (at) { return L + (W - L) * Math.max(0, 1 - (now - at) / span); };
    var y = function (v) { return (H - B) - (H - B - 4) * v / top; };
    var svg = '<svg viewBox="0 0 ' + W + ' ' + H + '" role="img" aria-label="' + esc(title) + '">' +
      '<path class="ax" d="M' + L + ' 2V' + (H - B) + 'H' + W + '"/>' +
      '<text x="' + (L - 3) + '" y="10" text-anchor="end">' + esc(unit(max)) + '</text>' +
      '<text x="' + (L - 3) + '" y="' + (H - B) + '" text-anchor="end">0</text>' +
      '<text x="' + L + '" y="' + (H - 2) + '">-1 h</text><text x="' + W + '" y="' + (H - 2) + '" text-anchor="end">now</text>';
    series.forEach(function (s, i) {
      var pts = [], lines = [];
      s.v.forEach(function (v, j) {
        if (v == null) { if (pts.length) lines.push(pts); pts = []; return; }
        pts.push(x(t[j]).toFixed(1) + ',' + y(v).toFixed(1));
      });
      if (pts.length) lines.push(pts);
      lines.forEach(function (p) {
        if (p.length === 1) p.push(p[0]);
        svg += '<polyline class="s' + (i % 6) + '" points="' + p.join(' ') + '"/>';
      });
    });
    svg += '</svg>';
    var lg = series.length > 1 ? '<div class="lg">' + series.map(function (s, i) {
      return '<span class="s' + (i % 6) + '">\u25a0 ' + esc(s.name) + '</span>';
    }).join('') + '</div>' : '';
    return '<figure><figcaption>' + esc(title) + '</figcaption>' + svg + lg + '</figure>';
  }
  function charts(v) {
    var h = v.history, now = v.now_ms;
    if (!h.at_ms.length) return '<p>No samples yet.</p>';
    var rate = function (n) { return bytes(n) + '/s'; };
    var out = chart('Tunnel throughput', h.at_ms, [{ name: 'in', v: h.rx_bytes_per_s }, { name: 'out', v: h.tx_bytes_per_s }], now, rate) +
      chart('Handshake age', h.at_ms, [{ name: 'age', v: h.handshake_age_s }], now, function (n) { return n + ' s'; });
    if (h.routes.length) {
      out += chart('Open connections per route', h.at_ms, h.routes.map(function (r) {
        return { name: r.name, v: r.connections };
      }), now, function (n) { return String(n); });
    }
    return out;
  }
  function draw(v) {
    $('top').className = v.verdict.level;
    $('word').textContent = v.verdict.word;
    document.title = 'gatelet: ' + v.verdict.word;
    $('why').innerHTML = v.verdict.reasons.map(function (r) { return '<li>' + esc(r) + '</li>'; }).join('');
    $('t').innerHTML = rows(v.tunnel, v.now_ms);
    $('s').innerHTML = rows(v.sync, v.now_ms) + rejected(v);
    $('h').innerHTML = rows(v.heartbeat, v.now_ms);
    $('r').innerHTML = routes(v);
    $('c').innerHTML = charts(v);
    $('e').innerHTML = events(v);
  }
  function tick() {
    var age = Date.now() - got, u = $('upd');
    $('age').textContent = ago(age) + (err ? ' (' + err + ')' : '');
    u.className = age > STALE_MS ? 'stale' : '';
  }
  function poll() {
    fetch('/status.json', { credentials: 'same-origin', cache: 'no-store' }).then(function (r) {
      if (r.status === 401) { location.href = '/login'; throw new Error('logged out'); }
      if (!r.ok) throw new Error('HTTP ' + r.status);
      return r.json();
    }).then(function (j) {
      draw(j.view); got = Date.now(); err = ''; tick();
    }).catch(function (e) { err = 'update failed: ' + e.message; tick(); });
  }
  // The action forms: sent in the background, the answer shown in the header.
  document.addEventListener('submit', function (ev) {
    var f = ev.target;
    if (!f.classList.contains('act') || f.action.indexOf('/action/') < 0) return;
    ev.preventDefault();
    var label = f.querySelector('button').textContent;
    $('msg').textContent = label + ': sent\u2026';
    fetch(f.action, { method: 'POST', body: new URLSearchParams(new FormData(f)), credentials: 'same-origin' }).then(function (r) {
      if (r.redirected && /\/login$/.test(r.url)) { location.href = '/login'; return; }
      if (r.ok) { $('msg').textContent = label + ': done'; poll(); return; }
      return r.json().then(function (j) { $('msg').textContent = label + ': refused (' + (j.error || r.status) + ')'; },
        function () { $('msg').textContent = label + ': refused (HTTP ' + r.status + ')'; });
    }).catch(function (e) { $('msg').textContent = label + ': failed (' + e.message + ')'; });
  });
  poll();
  setInterval(poll, POLL_MS);
  setInterval(tick, 1000);
})();
