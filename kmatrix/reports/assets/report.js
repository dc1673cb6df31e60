(function () {
  "use strict";
  var DATA = JSON.parse(document.getElementById("kmx-data").textContent);
  var detail = document.getElementById("detail");

  function el(tag, attrs, children) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        if (k === "text") { e.textContent = attrs[k]; } else { e.setAttribute(k, attrs[k]); }
      });
    }
    (children || []).forEach(function (c) {
      if (c !== null && c !== undefined) {
        e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
      }
    });
    return e;
  }
  function fmt(v) {
    if (typeof v !== "number") { return String(v); }
    return Math.abs(v) >= 100 ? v.toFixed(0) : String(Number(v.toPrecision(4)));
  }
  function block(title, text, open) {
    var d = el("details", open ? {open: ""} : null, [el("summary", {text: title})]);
    d.appendChild(el("pre", {text: text}));
    return d;
  }
  function row(cells, cls) {
    return el("tr", cls ? {"class": cls} : null, cells.map(function (c) {
      return typeof c === "string" || typeof c === "number" ? el("td", {text: String(c)}) : c;
    }));
  }

  function show(id) {
    var c = DATA.cells[id];
    if (!c) { return; }
    Array.prototype.forEach.call(document.querySelectorAll("td.cell.selected"), function (td) {
      td.classList.remove("selected");
    });
    var td = document.querySelector('td.cell[data-cell="' + CSS.escape(id) + '"]');
    if (td) { td.classList.add("selected"); }
    detail.textContent = "";
    detail.setAttribute("data-cell", id);
    detail.appendChild(el("h2", {id: "detail-title", text: id + " — " + c.status_label}));
    var b = c.boot || {};
    var facts = [
      ["kernel", c.kernel + (c.kernel_release ? " (" + c.kernel_release + ")" : "")],
      ["CPU model", c.cpu + (c.cpu_model && c.cpu_model !== c.cpu ? " (" + c.cpu_model + ")" : "")],
      ["device profile", c.device],
      ["accelerator", (b.accel || "?") + (b.accel_reason ? " — " + b.accel_reason : "")],
      ["boot", b.boot_seconds ? fmt(b.boot_seconds) + " s" : "did not reach userspace"],
      ["vCPUs / memory", (c.smp || "?") + " / " + (c.memory_mib || "?") + " MiB"]
    ];
    detail.appendChild(el("table", {"class": "plain"}, facts.map(function (f) {
      return el("tr", null, [el("th", {text: f[0]}), el("td", {text: f[1]})]);
    })));

    if (c.diff && c.diff.length) {
      detail.appendChild(el("h3", {text: "Against the baseline"}));
      detail.appendChild(el("table", {"class": "plain diff"}, c.diff.map(function (d) {
        return row([d.verdict, d.name, d.detail]);
      })));
    }

    detail.appendChild(el("h3", {text: "Tests (" + c.tests.length + ")"}));
    var tb = el("table", {"class": "tests"}, [el("tr", null, ["outcome", "test", "time", "message"].map(function (h) {
      return el("th", {text: h});
    }))]);
    c.tests.forEach(function (t) {
      var msg = el("td", null, [t.message || ""]);
      if (t.known) { msg.insertBefore(el("span", {"class": "badge warn", text: "known: " + t.known}), msg.firstChild); }
      var a = t.attribution;
      if (a && a.verdict !== "pass") {
        msg.insertBefore(el("span", {"class": "badge attr v-" + a.verdict, title: a.reason, text: a.label}), msg.firstChild);
      }
      if (t.longrepr) { msg.appendChild(block("full report", t.longrepr, false)); }
      tb.appendChild(el("tr", {"class": "test"}, [
        el("td", {"class": "o-" + t.outcome, text: t.outcome}),
        el("td", {text: t.name}),
        el("td", {text: fmt(t.duration) + " s"}),
        msg
      ]));
    });
    detail.appendChild(tb);

    if (c.reproduce || c.shell) {
      detail.appendChild(el("h3", {text: "Reproduce"}));
      if (c.reproduce) {
        detail.appendChild(el("p", {"class": "small", text: "the same VM (QEMU command line, kernel, initramfs) and the failing tests' guest commands:"}));
        detail.appendChild(el("pre", {"class": "cmd", text: "sh " + c.reproduce}));
      }
      detail.appendChild(el("p", {"class": "small", text: "an interactive shell on the cell:"}));
      detail.appendChild(el("pre", {"class": "cmd", text: c.shell}));
    }

    detail.appendChild(el("h3", {text: "Kernel-log findings (" + c.findings.length + ")"}));
    if (!c.findings.length) { detail.appendChild(el("p", {"class": "small", text: "none"})); }
    c.findings.forEach(function (f) {
      var where = f.source === "kmsg" ? " seq " + f.seq : " line " + f.line;
      var head = f.kind + ": " + f.title + " (" + (f.source || "log") + where + ")";
      if (f.charged) { head += " \u2014 " + f.charged; }
      var d = block(head, f.excerpt || "", true);
      d.classList.add("finding");
      if (f.known) { d.firstChild.appendChild(el("span", {"class": "badge warn", text: "known: " + f.known})); }
      detail.appendChild(d);
    });

    detail.appendChild(el("h3", {text: "Metrics"}));
    if (!c.metrics.length) { detail.appendChild(el("p", {"class": "small", text: "none"})); } else {
      var mt = el("table", {"class": "plain"}, [row(["metric", "value", "baseline"])]);
      c.metrics.forEach(function (m) {
        mt.appendChild(row([m.label, fmt(m.value), m.baseline === null ? "" : fmt(m.baseline)]));
      });
      detail.appendChild(mt);
    }

    detail.appendChild(el("h3", {text: "Logs"}));
    if (c.console !== null) { detail.appendChild(block("console log", c.console, true)); }
    if (c.dmesg !== null) { detail.appendChild(block("dmesg", c.dmesg, false)); }
    var links = el("p", {"class": "small"}, ["files: "]);
    Object.keys(c.artifacts || {}).forEach(function (k) {
      links.appendChild(el("a", {href: c.artifacts[k], text: k}));
      links.appendChild(document.createTextNode(" "));
    });
    detail.appendChild(links);
    detail.hidden = false;
  }

  Array.prototype.forEach.call(document.querySelectorAll("td.cell"), function (td) {
    td.addEventListener("click", function () {
      show(td.getAttribute("data-cell"));
      history.replaceState(null, "", "#cell=" + encodeURIComponent(td.getAttribute("data-cell")));
    });
    td.addEventListener("keydown", function (ev) {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); td.click(); }
    });
  });
  var filter = document.getElementById("attr-filter");
  if (filter) {
    Array.prototype.forEach.call(filter.querySelectorAll("button"), function (b) {
      b.addEventListener("click", function () {
        var want = b.getAttribute("data-filter");
        Array.prototype.forEach.call(filter.querySelectorAll("button"), function (o) {
          o.classList.toggle("on", o === b);
        });
        Array.prototype.forEach.call(document.querySelectorAll("td.cell, #attribution-tests tr[data-attr]"), function (e) {
          e.classList.toggle("dimmed", want !== "" && e.getAttribute("data-attr") !== want);
        });
      });
    });
  }
  var m = /^#cell=(.+)$/.exec(location.hash);
  if (m) { show(decodeURIComponent(m[1])); }
  document.documentElement.setAttribute("data-ready", "1");
})();
