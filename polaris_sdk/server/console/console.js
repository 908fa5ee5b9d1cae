// The read-only Polaris console: polls the admin API and redraws. No dependencies.
(function () {
  "use strict";
  var PAGE = 100;
  var params = new URLSearchParams(location.search);
  var refreshMs = Math.max(200, Number(params.get("refresh") || 2000));
  var state = {
    namespace: params.get("namespace") || "",
    service: params.get("service") || "",
    filter: "",
    servicesOffset: 0,
    instancesOffset: 0,
  };
  var $ = function (id) { return document.getElementById(id); };
  var tokenInput = $("token");
  tokenInput.value = sessionStorage.getItem("polaris-token") || "";
  tokenInput.addEventListener("change", function () {
    sessionStorage.setItem("polaris-token", tokenInput.value);
    refresh();
  });
  $("service-filter").addEventListener("change", function (e) {
    state.filter = e.target.value.trim();
    state.servicesOffset = 0;
    refresh();
  });

  function get(path, query) {
    var url = path + "?" + new URLSearchParams(query).toString();
    var headers = { Accept: "application/json" };
    if (tokenInput.value) headers["X-Polaris-Token"] = tokenInput.value;
    return fetch(url, { headers: headers, cache: "no-store" }).then(function (rsp) {
      return rsp.json().catch(function () { return {}; }).then(function (body) {
        if (!rsp.ok) {
          var why = rsp.status === 401 || rsp.status === 403 ? " (a token is needed)" : "";
          throw new Error(path + ": " + rsp.status + " " + (body.info || rsp.statusText) + why);
        }
        return body;
      });
    });
  }

  function cell(row, text, cls) {
    var td = document.createElement("td");
    td.textContent = text === undefined || text === null ? "" : String(text);
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }

  function link(text, onclick) {
    var a = document.createElement("a");
    a.textContent = text;
    a.addEventListener("click", onclick);
    return a;
  }

  function replaceRows(tbody, rows) {
    var fragment = document.createDocumentFragment();
    rows.forEach(function (r) { fragment.appendChild(r); });
    tbody.replaceChildren(fragment);
  }

  function pager(nav, offset, amount, go) {
    nav.replaceChildren();
    if (amount <= PAGE) return;
    var prev = document.createElement("button");
    prev.textContent = "previous";
    prev.disabled = offset === 0;
    prev.onclick = function () { go(Math.max(0, offset - PAGE)); };
    var next = document.createElement("button");
    next.textContent = "next";
    next.disabled = offset + PAGE >= amount;
    next.onclick = function () { go(offset + PAGE); };
    var where = document.createElement("span");
    where.textContent = (offset + 1) + "-" + Math.min(offset + PAGE, amount) + " of " + amount;
    nav.append(prev, next, where);
  }

  function drawNamespaces(body) {
    var items = (body.namespaces || []).map(function (ns) {
      var li = document.createElement("li");
      if (ns.name === state.namespace) li.className = "selected";
      li.appendChild(link(ns.name, function () {
        state.namespace = ns.name === state.namespace ? "" : ns.name;
        state.servicesOffset = 0;
        refresh();
      }));
      li.append(" (" + (ns.total_service_count || 0) + " services, " +
        (ns.total_health_instance_count || 0) + "/" + (ns.total_instance_count || 0) + " healthy)");
      return li;
    });
    $("namespaces").replaceChildren.apply($("namespaces"), items);
  }

  function drawServices(body) {
    var amount = body.amount || 0;
    $("services-count").textContent = "(" + amount + ")";
    var rows = (body.services || []).map(function (svc) {
      var tr = document.createElement("tr");
      tr.dataset.service = svc.namespace + "/" + svc.name;
      if (svc.namespace === state.namespace && svc.name === state.service) tr.className = "selected";
      cell(tr, svc.namespace);
      cell(tr, "").appendChild(link(svc.name, function () {
        state.namespace = svc.namespace;
        state.service = svc.name;
        state.instancesOffset = 0;
        refresh();
      }));
      cell(tr, svc.total_instance_count || 0);
      cell(tr, svc.healthy_instance_count || 0);
      cell(tr, svc.revision, "mono");
      return tr;
    });
    replaceRows($("services").tBodies[0], rows);
    pager($("services-pager"), state.servicesOffset, amount, function (offset) {
      state.servicesOffset = offset;
      refresh();
    });
  }

  function lastHeartbeat(meta) {
    if (meta["last-heartbeat-time"]) return meta["last-heartbeat-time"];
    var unix = Number(meta["last-heartbeat-timestamp"] || meta["internal-lastheartbeat"] || 0);
    return unix ? new Date(unix * 1000).toLocaleString() : "";
  }

  function drawInstances(body) {
    var amount = body.amount || 0;
    $("instances-pane").hidden = false;
    $("instances-title").textContent = state.namespace + "/" + state.service;
    $("instances-count").textContent = "(" + amount + ")";
    var rows = (body.instances || []).map(function (ins) {
      var meta = ins.metadata || {};
      var tr = document.createElement("tr");
      tr.dataset.instanceId = ins.id;
      tr.dataset.healthy = String(!!ins.healthy);
      tr.dataset.isolated = String(!!ins.isolate);
      cell(tr, ins.host, "mono");
      cell(tr, ins.port);
      cell(tr, ins.healthy ? "healthy" : "unhealthy", ins.healthy ? "healthy" : "unhealthy");
      cell(tr, ins.isolate ? "isolated" : "no", ins.isolate ? "isolated" : "");
      cell(tr, ins.weight);
      cell(tr, Object.keys(meta).filter(function (k) { return k.indexOf("last-heartbeat") !== 0; })
        .sort().map(function (k) { return k + "=" + meta[k]; }).join(", "), "meta");
      cell(tr, lastHeartbeat(meta));
      cell(tr, ins.revision, "mono");
      return tr;
    });
    replaceRows($("instances").tBodies[0], rows);
    pager($("instances-pager"), state.instancesOffset, amount, function (offset) {
      state.instancesOffset = offset;
      refresh();
    });
  }

  var busy = false;
  function refresh() {
    if (busy) return Promise.resolve();
    busy = true;
    var serviceQuery = { offset: state.servicesOffset, limit: PAGE };
    if (state.namespace) serviceQuery.namespace = state.namespace;
    if (state.filter) serviceQuery.name = state.filter;
    var work = [
      get("/naming/v1/namespaces", { limit: PAGE }).then(drawNamespaces),
      get("/naming/v1/services", serviceQuery).then(drawServices),
    ];
    if (state.service) {
      work.push(get("/naming/v1/instances", {
        namespace: state.namespace || "default", service: state.service,
        offset: state.instancesOffset, limit: PAGE,
      }).then(drawInstances));
    }
    return Promise.all(work).then(function () {
      $("status").textContent = "updated " + new Date().toLocaleTimeString();
      $("status").className = "";
      document.body.dataset.refreshed = String(Date.now());
    }).catch(function (err) {
      $("status").textContent = err.message;
      $("status").className = "error";
    }).finally(function () { busy = false; });
  }

  refresh();
  setInterval(refresh, refreshMs);
})();
