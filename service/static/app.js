// The forecasters' page: the newest nowcast as a radar loop on a map, probabilities, the forecast at a place,
// and forecasts of a dropped radar file. Plain browser JavaScript, no build step; the libraries (OpenLayers,
// proj4js, topojson-client, uPlot) are vendored under static/vendor/ (see VERSIONS.json there).
//
// The map is drawn in the radar grid's own projection (its PROJ string registered with proj4js), so a frame
// is placed exactly by its cell-edge extent without resampling; borders, coastlines and the graticule are
// projected onto it. Frames are PNGs rendered by the service, fetched with the API key in a header (never in
// a URL) and decoded once into ImageBitmaps; a loop step only draws one bitmap.
"use strict";

(function () {
  const KEY_STORAGE = "nowcast.apiKey";
  const REFRESH_MS = 60000;
  const FETCH_PARALLEL = 6;
  const ADHOC_STEPS = 12;
  const PLAY_END_PAUSE = 2;  // extra ticks on the last frame before the loop starts again
  const $ = (id) => document.getElementById(id);

  // Everything the page shows; window.nowcastPage lets a person (or a browser test) look inside.
  const state = {
    mode: "feed",          // "feed" or "adhoc"
    meta: null,            // /v1/nowcasts/latest, or the ad-hoc answer
    index: null,           // the product's frame index (frame URLs, extent, projection, scales)
    field: "rain",         // "rain", "p:<mm/h>", "m:<mm/h>" (at some time) or "a:<mm>" (over the forecast)
    frames: [],            // [{time, lead_min, kind, url}] of the loop
    bitmaps: [],           // decoded frames, same order as frames
    loaded: 0,
    current: 0,
    playing: false,
    timer: null,
    endPause: 0,
    drawn: [],             // frame indices as drawn on the map, newest last
    firstFrameMs: null,    // from navigation start to the first frame on the map
    readyMs: null,         // ... to every frame of the loop decoded
    map: null,
    loadToken: 0,
    georeferenced: false,
    pointQuery: null,
    clicked: null,         // the map coordinate (grid projection units) of the last click
    point: null,
    adhocName: null,
    errors: [],
  };
  window.nowcastPage = state;

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  // --- the API, with the key from this tab's sessionStorage in the X-API-Key header ---------------------------

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE) || "";
  }

  async function api(path, options = {}) {
    const headers = new Headers(options.headers || {});
    const key = apiKey();
    if (key) headers.set("X-API-Key", key);
    const response = await fetch(path, { ...options, headers, credentials: "omit", referrerPolicy: "no-referrer" });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        const body = await response.json();
        if (body && body.detail) detail = body.detail;
      } catch (_) { /* not JSON: the status text says enough */ }
      if (response.status === 401) showKeyForm(detail);
      throw new ApiError(response.status, detail);
    }
    return response;
  }

  function showKeyForm(reason) {
    const form = $("key-form");
    form.hidden = false;
    form.querySelector("label").textContent =
      `${reason}. Type the API key; it is kept for this browser tab only.`;
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("key-input").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY_STORAGE, value);
    $("key-input").value = "";
    $("key-form").hidden = true;
    reload();
  });
  $("key-forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    $("key-input").value = "";
  });
  $("key-button").addEventListener("click", () => showKeyForm(apiKey() ? "A key is set for this tab" : "No key set"));

  // --- banners ----------------------------------------------------------------------------------------------

  function setBanners(items) {
    const box = $("banners");
    box.replaceChildren(...items.map(([kind, text]) => {
      const div = document.createElement("div");
      div.className = `banner ${kind}`;
      div.dataset.kind = kind;
      div.textContent = text;
      return div;
    }));
  }

  function productBanners() {
    const meta = state.meta;
    const items = [];
    if (!meta) return items;
    if (state.mode === "adhoc") {
      items.push(["adhoc", `Ad-hoc forecast of ${state.adhocName}, not the live feed.`]);
    } else if (meta.stale) {
      items.push(["stale", `Feed stale: the newest product is from ${clock(meta.reference_time)} ` +
        `(${age(meta.reference_time)} old). No newer radar data has been forecast.`]);
    }
    if (meta.fallback) {
      items.push(["fallback", "Made by the extrapolation fallback, not the configured model" +
        (meta.fallback_reason ? `: ${meta.fallback_reason}` : ".")]);
    }
    if (meta.missing_frames) {
      items.push(["info", `${meta.missing_frames} input radar frame(s) were missing when this product was made.`]);
    }
    if (state.index && !state.georeferenced) {
      items.push(["info", "This grid has no map projection: shown in grid coordinates, without borders."]);
    }
    return items;
  }

  function reportError(error) {
    state.errors.push(String(error && error.message || error));
    setBanners([...productBanners(), ["error", String(error && error.message || error)]]);
  }

  // --- times ------------------------------------------------------------------------------------------------

  function clock(iso) {
    const d = new Date(iso);
    return `${d.toISOString().slice(0, 10)} ${d.toISOString().slice(11, 16)} UTC`;
  }

  function age(iso) {
    const minutes = Math.max(0, Math.round((Date.now() - new Date(iso).getTime()) / 60000));
    if (minutes < 90) return `${minutes} min`;
    const hours = minutes / 60;
    return hours < 48 ? `${hours.toFixed(1)} h` : `${(hours / 24).toFixed(1)} days`;
  }

  function leadText(frame) {
    const lead = Math.round(frame.lead_min);
    if (frame.kind === "observed") return lead === 0 ? "observed, newest frame" : `observed, ${lead} min`;
    if (frame.kind === "max_probability") {
      return `at some time from +${Math.round(frame.first_lead_min)} to +${lead} min`;
    }
    if (frame.kind === "accumulation_probability") return `in total from now to +${lead} min`;
    return `forecast +${lead} min`;
  }

  function renderInfo() {
    const meta = state.meta;
    const info = $("product-info");
    if (!meta) return;
    const parts = [];
    const model = meta.model || "unknown model";
    parts.push(`model <b>${escapeHtml(model)}</b>` + (meta.members ? ` (${meta.members} members)` : ""));
    const reference = meta.reference_time || (state.index && state.index.reference_time);
    if (state.mode === "adhoc") {
      parts.push(`file <b>${escapeHtml(state.adhocName || "")}</b>`);
      parts.push(`from the frame of ${clock(reference)}`);
    } else {
      parts.push(`newest radar frame <b>${clock(reference)}</b>, ${age(reference)} old`);
      if (meta.written_at) parts.push(`made ${clock(meta.written_at)}`);
    }
    info.innerHTML = parts.join(" · ");
    info.dataset.model = model;
    info.dataset.reference = reference;
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  // --- the map ----------------------------------------------------------------------------------------------

  let map = null;
  let mapKey = "";
  let frameSource = null;
  let contextSource = null;
  let markerSource = null;
  let gridProjection = null;
  let atlas = null;

  function projectionFor(index) {
    const extent = index.extent;
    if (index.projection) {
      try {
        const code = `nowcast:grid:${hashText(index.projection)}`;
        if (!proj4.defs(code)) proj4.defs(code, index.projection);
        ol.proj.proj4.register(proj4);
        const projection = ol.proj.get(code);
        projection.setExtent(padExtent(extent, 2));
        return { projection, georeferenced: true };
      } catch (error) {
        state.errors.push(`projection not understood: ${error.message}`);
      }
    }
    const projection = new ol.proj.Projection({ code: "nowcast:grid:cells", units: "m", extent: padExtent(extent, 2) });
    return { projection, georeferenced: false };
  }

  function padExtent(extent, factor) {
    const w = (extent[2] - extent[0]) * factor;
    const h = (extent[3] - extent[1]) * factor;
    return [extent[0] - w, extent[1] - h, extent[2] + w, extent[3] + h];
  }

  function hashText(text) {
    let h = 0;
    for (let i = 0; i < text.length; i++) h = (Math.imul(31, h) + text.charCodeAt(i)) | 0;
    return (h >>> 0).toString(16);
  }

  function ensureMap(index, grid) {
    const key = `${index.projection}|${index.extent.join(",")}`;
    if (map && key === mapKey) return;
    mapKey = key;
    const { projection, georeferenced } = projectionFor(index);
    gridProjection = projection;
    state.georeferenced = georeferenced;
    frameSource = new ol.source.ImageCanvas({ projection, ratio: 1, canvasFunction: drawFrame });
    contextSource = new ol.source.Vector();
    markerSource = new ol.source.Vector();
    const layers = [
      new ol.layer.Image({ source: frameSource }),
      new ol.layer.Vector({ source: contextSource, style: contextStyle, updateWhileAnimating: true }),
      new ol.layer.Vector({ source: markerSource, style: markerStyle() }),
    ];
    const view = new ol.View({ projection, center: ol.extent.getCenter(index.extent), zoom: 2,
                               extent: padExtent(index.extent, 0.5), constrainOnlyCenter: true });
    if (map) {
      map.setLayers(layers);
      map.setView(view);
    } else {
      map = new ol.Map({
        target: "map", layers, view,
        controls: ol.control.defaults.defaults({ attribution: false, rotate: false })
          .extend([new ol.control.ScaleLine({ units: "metric" })]),
      });
      map.on("singleclick", (event) => pointAt(event.coordinate).catch(reportError));
      state.map = map;
    }
    view.fit(index.extent, { padding: [10, 10, 10, 10] });
    if (georeferenced && grid && grid.bounds_lonlat) drawContext(grid.bounds_lonlat).catch(reportError);
  }

  function drawFrame(extent, resolution, pixelRatio, size) {
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(size[0]);
    canvas.height = Math.round(size[1]);
    const bitmap = state.bitmaps[state.current];
    if (bitmap && state.index) {
      const ctx = canvas.getContext("2d");
      ctx.imageSmoothingEnabled = false;
      const e = state.index.extent;
      const scale = pixelRatio / resolution;
      ctx.drawImage(bitmap, (e[0] - extent[0]) * scale, (extent[3] - e[3]) * scale,
                    (e[2] - e[0]) * scale, (e[3] - e[1]) * scale);
      state.drawn.push(state.current);
      if (state.drawn.length > 1000) state.drawn.splice(0, 500);
      if (state.firstFrameMs === null) {
        state.firstFrameMs = performance.now();
        document.body.dataset.firstFrameMs = String(Math.round(state.firstFrameMs));
      }
    }
    return canvas;
  }

  const contextStyles = {
    border: new ol.style.Style({ stroke: new ol.style.Stroke({ color: "rgba(30, 30, 30, 0.85)", width: 0.9 }) }),
    graticule: new ol.style.Style({
      stroke: new ol.style.Stroke({ color: "rgba(60, 60, 60, 0.45)", width: 0.6, lineDash: [4, 4] }),
    }),
  };

  function contextStyle(feature) {
    const label = feature.get("label");
    if (label) {
      return new ol.style.Style({
        text: new ol.style.Text({
          text: label, font: "10px system-ui, sans-serif", fill: new ol.style.Fill({ color: "#333" }),
          stroke: new ol.style.Stroke({ color: "rgba(255,255,255,0.9)", width: 3 }),
          offsetY: feature.get("offsetY") || 0, offsetX: feature.get("offsetX") || 0,
        }),
      });
    }
    return contextStyles[feature.get("kind")];
  }

  function markerStyle() {
    return new ol.style.Style({
      image: new ol.style.Circle({
        radius: 6, stroke: new ol.style.Stroke({ color: "#000", width: 2 }),
        fill: new ol.style.Fill({ color: "rgba(255,255,255,0.6)" }),
      }),
    });
  }

  async function drawContext(bounds) {
    const [[lonMin, latMin], [lonMax, latMax]] = bounds;
    const padLon = Math.max(2, (lonMax - lonMin) * 0.3);
    const padLat = Math.max(2, (latMax - latMin) * 0.3);
    const box = [lonMin - padLon, Math.max(-89.9, latMin - padLat), lonMax + padLon, Math.min(89.9, latMax + padLat)];
    const features = graticule(bounds, box);
    if (!atlas) atlas = await (await fetch("static/vendor/countries-50m.json")).json();
    const mesh = topojson.mesh(atlas, atlas.objects.countries);
    const lines = [];
    for (const line of mesh.coordinates) lines.push(...clipLine(line, box));
    features.push(new ol.Feature({ kind: "border", geometry: new ol.geom.MultiLineString(projectLines(lines)) }));
    contextSource.clear();
    contextSource.addFeatures(features);
  }

  // Runs of a lon/lat line inside a box (a projected far-away point can be anywhere, or nowhere).
  function clipLine(line, box) {
    const runs = [];
    let run = [];
    for (const p of line) {
      if (p[0] >= box[0] && p[0] <= box[2] && p[1] >= box[1] && p[1] <= box[3]) {
        run.push(p);
      } else if (run.length) {
        if (run.length > 1) runs.push(run);
        run = [];
      }
    }
    if (run.length > 1) runs.push(run);
    return runs;
  }

  function projectLines(lines) {
    return lines.map((line) => line.map((p) => ol.proj.transform(p, "EPSG:4326", gridProjection)))
      .filter((line) => line.every((p) => Number.isFinite(p[0]) && Number.isFinite(p[1])));
  }

  function graticule(bounds, box) {
    const [[lonMin, latMin], [lonMax, latMax]] = bounds;
    const span = Math.max(lonMax - lonMin, latMax - latMin);
    const step = span > 60 ? 10 : span > 24 ? 5 : span > 10 ? 2 : span > 4 ? 1 : 0.5;
    const features = [];
    const samples = 80;
    const inGrid = (p) => ol.extent.containsCoordinate(state.index.extent, p);
    for (let lon = Math.ceil(box[0] / step) * step; lon <= box[2]; lon += step) {
      const line = [];
      for (let i = 0; i <= samples; i++) line.push([lon, box[1] + (box[3] - box[1]) * i / samples]);
      addGraticuleLine(features, line, `${Math.abs(lon)}°${lon < 0 ? "W" : "E"}`, inGrid, 0, -8);
    }
    for (let lat = Math.ceil(box[1] / step) * step; lat <= box[3]; lat += step) {
      const line = [];
      for (let i = 0; i <= samples; i++) line.push([box[0] + (box[2] - box[0]) * i / samples, lat]);
      addGraticuleLine(features, line, `${Math.abs(lat)}°${lat < 0 ? "S" : "N"}`, inGrid, 18, 0);
    }
    return features;
  }

  function addGraticuleLine(features, line, label, inGrid, offsetX, offsetY) {
    const projected = projectLines([line])[0];
    if (!projected) return;
    features.push(new ol.Feature({ kind: "graticule", geometry: new ol.geom.LineString(projected) }));
    const first = projected.find(inGrid);  // labelled where the line enters the grid
    if (first) features.push(new ol.Feature({ label, offsetX, offsetY, geometry: new ol.geom.Point(first) }));
  }

  // --- frames and the loop ----------------------------------------------------------------------------------

  function loopFrames(index, field) {
    if (field.startsWith("m:")) {
      // the forecast's maximum: one frame, valid over the whole forecast
      const entry = index.probabilities.find((p) => `m:${p.threshold_mmh}` === field);
      const last = index.forecast[index.forecast.length - 1];
      if (entry && entry.max_frame && last) {
        return [{ ...last, url: entry.max_frame, kind: "max_probability", threshold: entry.threshold_mmh,
                  first_lead_min: index.forecast[0].lead_min }];
      }
    }
    if (field.startsWith("a:")) {
      // the rain over the forecast period: one frame, from the newest radar frame to the last lead
      const entry = (index.accumulation_probabilities || []).find((p) => `a:${p.threshold_mm}` === field);
      const last = index.forecast[index.forecast.length - 1];
      if (entry && last) {
        return [{ ...last, url: entry.frame, kind: "accumulation_probability", threshold: entry.threshold_mm }];
      }
    }
    if (field.startsWith("p:")) {
      const entry = index.probabilities.find((p) => `p:${p.threshold_mmh}` === field);
      if (entry) {
        return entry.frames.map((url, i) => ({ ...index.forecast[i], url, kind: "probability",
                                               threshold: entry.threshold_mmh }));
      }
    }
    return [...index.observed.map((f) => ({ ...f, kind: "observed" })),
            ...index.forecast.map((f) => ({ ...f, kind: "forecast" }))];
  }

  async function showFrames(startAt) {
    const token = ++state.loadToken;
    stop();
    state.frames = loopFrames(state.index, state.field);
    state.bitmaps = new Array(state.frames.length).fill(null);
    state.loaded = 0;
    const slider = $("frame-slider");
    slider.max = String(Math.max(0, state.frames.length - 1));
    state.current = Math.min(startAt, state.frames.length - 1);
    slider.value = String(state.current);
    renderLegend();
    updateTimes();
    document.body.dataset.framesLoaded = "0";
    // the frame on screen first, then the rest in order, a few at a time
    const order = [state.current, ...state.frames.keys()].filter((v, i, a) => a.indexOf(v) === i);
    let next = 0;
    const worker = async () => {
      while (next < order.length) {
        const i = order[next++];
        const blob = await (await api(state.frames[i].url)).blob();
        const bitmap = await createImageBitmap(blob);
        if (token !== state.loadToken) return;
        state.bitmaps[i] = bitmap;
        state.loaded++;
        document.body.dataset.framesLoaded = String(state.loaded);
        if (i === state.current) frameSource.changed();
      }
    };
    await Promise.all(Array.from({ length: Math.min(FETCH_PARALLEL, order.length) }, worker));
    if (token === state.loadToken) {
      state.readyMs = performance.now();
      document.body.dataset.ready = "true";
    }
  }

  function setFrame(i) {
    state.current = i;
    $("frame-slider").value = String(i);
    updateTimes();
    if (frameSource) frameSource.changed();
  }

  function updateTimes() {
    const frame = state.frames[state.current];
    if (!frame) return;
    $("valid-time").textContent = `valid ${clock(frame.time)}`;
    $("valid-time").dataset.time = frame.time;
    const lead = $("lead-time");
    lead.textContent = leadText(frame);
    lead.className = frame.kind === "observed" ? "observed" : "";
    lead.dataset.leadMin = String(frame.lead_min);
  }

  function tick() {
    if (state.bitmaps[(state.current + 1) % state.frames.length] === null) return;  // still loading: wait
    if (state.current === state.frames.length - 1 && state.endPause < PLAY_END_PAUSE) {
      state.endPause++;
      return;
    }
    state.endPause = 0;
    setFrame((state.current + 1) % state.frames.length);
  }

  function play() {
    if (state.playing || state.frames.length < 2) return;
    state.playing = true;
    $("play").innerHTML = "&#10074;&#10074;";
    $("play").setAttribute("aria-label", "pause");
    state.timer = setInterval(tick, Number($("speed").value));
  }

  function stop() {
    state.playing = false;
    clearInterval(state.timer);
    state.timer = null;
    $("play").innerHTML = "&#9654;";
    $("play").setAttribute("aria-label", "play");
  }

  $("play").addEventListener("click", () => (state.playing ? stop() : play()));
  $("speed").addEventListener("change", () => { if (state.playing) { stop(); play(); } });
  $("frame-slider").addEventListener("input", (event) => { stop(); setFrame(Number(event.target.value)); });
  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.target instanceof HTMLSelectElement) return;
    if (event.key === " ") { event.preventDefault(); state.playing ? stop() : play(); }
    if (event.key === "ArrowRight") { stop(); setFrame(Math.min(state.current + 1, state.frames.length - 1)); }
    if (event.key === "ArrowLeft") { stop(); setFrame(Math.max(state.current - 1, 0)); }
  });

  // --- the field choice and the legend ----------------------------------------------------------------------

  function fillFieldSelect(index) {
    const select = $("field-select");
    const options = [new Option("rain rate (mm/h)", "rain")];
    for (const p of index.probabilities) {
      // neighbourhood-processed: "rain above the threshold near here", its window widening with the lead
      const near = p.neighbourhood_km_per_minute
        ? ` nearby (window ${p.neighbourhood_km_per_minute} km per min of lead)` : "";
      options.push(new Option(`probability of rain rate > ${p.threshold_mmh} mm/h${near}`, `p:${p.threshold_mmh}`));
    }
    for (const p of index.probabilities.filter((entry) => entry.max_frame)) {
      options.push(new Option(`probability of rain rate > ${p.threshold_mmh} mm/h at some time of the forecast`,
                              `m:${p.threshold_mmh}`));
    }
    for (const p of index.accumulation_probabilities || []) {
      options.push(new Option(`probability of rain > ${p.threshold_mm} mm in total over the forecast`,
                              `a:${p.threshold_mm}`));
    }
    if (!index.probabilities.length && !(index.accumulation_probabilities || []).length) {
      const none = new Option("probabilities: none (no ensemble members)", "none");
      none.disabled = true;
      options.push(none);
    }
    select.replaceChildren(...options);
    if (![...select.options].some((o) => o.value === state.field && !o.disabled)) state.field = "rain";
    select.value = state.field;
  }

  $("field-select").addEventListener("change", (event) => {
    const lead = state.frames[state.current] ? state.frames[state.current].lead_min : 0;
    state.field = event.target.value;
    const frames = loopFrames(state.index, state.field);
    let start = frames.findIndex((f) => f.lead_min >= lead);
    if (start < 0) start = 0;
    showFrames(start).catch(reportError);
  });

  function renderLegend() {
    const probability = /^[pma]:/.test(state.field);
    const scale = state.index.scales[probability ? "probability" : "rain"];
    const rows = [];
    const fmt = (v) => (probability ? `${Math.round(v * 100)} %` : `${v}`);
    if (!probability) rows.push([scale.over, `≥ ${fmt(scale.levels[scale.levels.length - 1])} mm/h`]);
    for (let i = scale.colours.length - 1; i >= 0; i--) {
      const high = scale.levels[i + 1];
      rows.push([scale.colours[i], probability ? `${fmt(scale.levels[i])} – ${fmt(high)}`
        : `${fmt(scale.levels[i])} – ${fmt(high)} mm/h`]);
    }
    const box = $("legend");
    const title = document.createElement("div");
    const maximum = state.field.startsWith("m:");
    const total = state.field.startsWith("a:");
    title.textContent = !probability ? "rain rate" : total ? `P(rain > ${state.field.slice(2)} mm in total)`
      : `P(rain rate > ${state.field.slice(2)} mm/h${maximum ? " at some time" : ""})`;
    const items = rows.map(([colour, text]) => legendRow(colour, text));
    const entry = probability && (total
      ? (state.index.accumulation_probabilities || []).find((p) => `a:${p.threshold_mm}` === state.field)
      : state.index.probabilities.find((p) => `${state.field[0]}:${p.threshold_mmh}` === state.field));
    const needed = entry ? entry.minimum_members_with_data : null;
    items.push(legendRow(null, needed ? `no data, or fewer than ${needed} members with data` : "no data"));
    box.replaceChildren(title, ...items);
  }

  function legendRow(colour, text) {
    const row = document.createElement("div");
    row.className = "row";
    const swatch = document.createElement("span");
    swatch.className = colour ? "swatch" : "swatch nodata";
    if (colour) swatch.style.background = colour;
    const label = document.createElement("span");
    label.textContent = text;
    row.append(swatch, label);
    return row;
  }

  // --- the forecast at a place ------------------------------------------------------------------------------

  let chart = null;

  function pointLink() {
    return state.mode === "adhoc" ? state.meta.links.point : "v1/nowcasts/latest/point";
  }

  async function pointAt(coordinate) {
    if (!state.index) return;
    if (!ol.extent.containsCoordinate(state.index.extent, coordinate)) {
      $("point-hint").textContent = "That place is outside the radar grid.";
      return;
    }
    const params = new URLSearchParams();
    if (state.georeferenced) {
      const [lon, lat] = ol.proj.toLonLat(coordinate, gridProjection);
      params.set("lat", lat.toFixed(5));
      params.set("lon", lon.toFixed(5));
    } else {
      params.set("x", coordinate[0].toFixed(3));
      params.set("y", coordinate[1].toFixed(3));
    }
    state.pointQuery = params.toString();
    state.clicked = coordinate;
    markerSource.clear();
    markerSource.addFeature(new ol.Feature(new ol.geom.Point(coordinate)));
    const data = await (await api(`${pointLink()}?${state.pointQuery}`)).json();
    state.point = data;
    renderPoint(data);
  }

  function renderPoint(data) {
    $("point-hint").textContent = "Click elsewhere for another place.";
    const panel = $("point-panel");
    panel.hidden = false;
    panel.dataset.query = state.pointQuery;
    const loc = data.location;
    const where = loc.lat !== null && loc.lat !== undefined
      ? `${loc.lat.toFixed(3)}°N ${loc.lon.toFixed(3)}°E` : `x ${loc.x}, y ${loc.y}`;
    $("point-title").textContent = data.no_data ? `${where}: no radar data there` : where;
    const thresholds = Object.keys((data.forecast.find((f) => f.probabilities) || {}).probabilities || {});
    renderPointPeriod(data);
    renderPointTable(data, thresholds);
    renderPointChart(data, thresholds);
  }

  // What the whole forecast says at the place: the rate above a threshold at some time, the rain above one in total
  function renderPointPeriod(data) {
    const box = $("point-period");
    const last = data.forecast.length ? Math.round(data.forecast[data.forecast.length - 1].lead_min) : 0;
    const lines = [];
    for (const [kind, values, words] of [
      ["max", data.max_probabilities, (t) => `P(rate > ${Number(t)} mm/h at some time)`],
      ["accumulation", data.accumulation_probabilities, (t) => `P(rain > ${Number(t)} mm in total)`],
    ]) {
      if (!values) continue;
      const line = document.createElement("div");
      line.dataset.kind = kind;
      for (const [threshold, value] of Object.entries(values)) {
        const span = document.createElement("span");
        span.dataset.threshold = threshold;
        span.dataset.value = value === null ? "" : String(value);
        span.textContent = `${words(threshold)} ${value === null ? "–" : value.toFixed(2)}`;
        if (line.childElementCount) line.append(" · ");
        line.append(span);
      }
      lines.push(line);
    }
    if (lines.length) {
      const heading = document.createElement("div");
      heading.textContent = `From now to +${last} min:`;
      lines.unshift(heading);
    }
    box.replaceChildren(...lines);
    box.hidden = !lines.length;
  }

  function renderPointTable(data, thresholds) {
    const table = $("point-table");
    const head = document.createElement("tr");
    for (const text of ["time", "lead", "mm/h", ...thresholds.map((t) => `P>${Number(t)}`)]) {
      const th = document.createElement("th");
      th.textContent = text;
      head.append(th);
    }
    const rows = [head];
    const cell = (value, digits, kind) => {
      const td = document.createElement("td");
      td.dataset.kind = kind;
      td.dataset.value = value === null || value === undefined ? "" : String(value);
      td.textContent = value === null || value === undefined ? "–" : Number(value).toFixed(digits);
      return td;
    };
    const observedLast = data.observed.length ? data.observed[data.observed.length - 1] : null;
    if (observedLast) {
      const tr = document.createElement("tr");
      tr.className = "observed";
      const time = document.createElement("td");
      time.textContent = observedLast.time.slice(11, 16);
      const lead = document.createElement("td");
      lead.textContent = "now";
      tr.append(time, lead, cell(observedLast.rate_mmh, 2, "rate"), ...thresholds.map(() => cell(null, 2, "p")));
      rows.push(tr);
    }
    for (const step of data.forecast) {
      const tr = document.createElement("tr");
      tr.className = "forecast";
      tr.dataset.time = step.time;
      const time = document.createElement("td");
      time.textContent = step.time.slice(11, 16);
      const lead = document.createElement("td");
      lead.textContent = `+${Math.round(step.lead_min)}`;
      tr.append(time, lead, cell(step.rate_mmh, 2, "rate"),
                ...thresholds.map((t) => cell(step.probabilities ? step.probabilities[t] : null, 2, `p${t}`)));
      rows.push(tr);
    }
    table.replaceChildren(...rows);
  }

  function renderPointChart(data, thresholds) {
    const times = [...data.observed.map((o) => o.time), ...data.forecast.map((f) => f.time)]
      .map((t) => new Date(t).getTime() / 1000);
    const nObs = data.observed.length;
    const observed = [...data.observed.map((o) => o.rate_mmh),
                      ...data.forecast.map(() => null)];
    // the forecast line starts from the newest observation, so the two read as one curve
    const forecast = [...data.observed.map((o, i) => (i === nObs - 1 ? o.rate_mmh : null)),
                      ...data.forecast.map((f) => f.rate_mmh)];
    const palette = ["#f59e72", "#ef6a4c", "#b3213b", "#7a0177", "#3b0f70"];
    const series = [
      {},
      { label: "observed mm/h", stroke: "#222", width: 2, scale: "mm", spanGaps: false },
      { label: "forecast mm/h", stroke: "#2a7fc0", width: 2, scale: "mm", spanGaps: false },
      ...thresholds.map((t, i) => ({
        label: `P>${Number(t)}`, stroke: palette[i % palette.length], width: 1.5, scale: "p",
        fill: `${palette[i % palette.length]}33`, spanGaps: false,
      })),
    ];
    const probabilitySeries = thresholds.map((t) => [...data.observed.map(() => null),
      ...data.forecast.map((f) => (f.probabilities ? f.probabilities[t] : null))]);
    const rates = [...observed, ...forecast].filter((v) => v !== null);
    const top = Math.max(1, ...rates) * 1.15;
    const width = Math.max(280, $("point-panel").clientWidth || 320);
    const options = {
      width, height: 200, series,
      scales: { x: { time: true }, mm: { range: [0, top] }, p: { range: [0, 1] } },
      axes: [
        { size: 30, values: (u, splits) => splits.map((v) => new Date(v * 1000).toISOString().slice(11, 16)) },
        { scale: "mm", label: "mm/h", size: 42 },
        ...(thresholds.length ? [{ scale: "p", side: 1, label: "probability", grid: { show: false }, size: 40 }] : []),
      ],
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      legend: { live: false },
      cursor: { drag: { x: false, y: false } },
    };
    if (chart) chart.destroy();
    chart = new uPlot(options, [times, observed, forecast, ...probabilitySeries], $("point-chart"));
  }

  // --- loading a product ------------------------------------------------------------------------------------

  async function showProduct() {
    const index = state.index;
    ensureMap(index, state.meta.grid);
    fillFieldSelect(index);
    renderInfo();
    setBanners(productBanners());
    document.body.dataset.mode = state.mode;
    document.body.dataset.reference = index.reference_time;
    const frames = loopFrames(index, state.field);
    const now = frames.findIndex((f) => f.kind !== "observed");
    await showFrames(state.field === "rain" ? Math.max(0, now - 1) : 0);
    if (state.point && state.pointQuery) {
      const data = await (await api(`${pointLink()}?${state.pointQuery}`)).json();
      renderPoint(data);
    }
  }

  async function loadLatest() {
    let meta;
    try {
      meta = await (await api("v1/nowcasts/latest")).json();
    } catch (error) {
      if (error.status === 404) {
        $("product-info").textContent = "no product yet";
        setBanners([["error", `No nowcast to show: ${error.message}. The page looks again every minute.`]]);
        return;
      }
      throw error;
    }
    if (state.mode !== "feed") return;
    const changed = !state.meta || state.meta.reference_time !== meta.reference_time || !state.index;
    state.meta = meta;
    if (changed) {
      state.index = await (await api("v1/nowcasts/latest/frames")).json();
      await showProduct();
    } else {
      renderInfo();
      setBanners(productBanners());
    }
  }

  function reload() {
    if (state.mode === "feed") loadLatest().catch(reportError);
  }

  // --- ad-hoc: a dropped radar file ---------------------------------------------------------------------------

  const isHdf5 = (file) => /\.(h5|hdf5|hdf)$/i.test(file.name);

  async function forecastFile(files) {
    if (!files.length) return;
    if (document.body.dataset.adhoc === "running") {
      $("adhoc-status").textContent = "One forecast at a time: the last one is still running.";
      return;
    }
    let body, type, label;
    if (files.length === 1 && !isHdf5(files[0])) {
      [body, type, label] = [files[0], "application/x-netcdf", files[0].name];
    } else if (files.every(isHdf5)) {
      [body, type, label] = [await tarOf(files), "application/x-tar", files.length === 1 ? files[0].name
        : `${files.length} radar files (${files[0].name} …)`];
    } else {
      $("adhoc-status").textContent =
        "Drop one CF-netCDF file, or a handful of HDF5 (ODIM_H5) radar files together.";
      return;
    }
    const params = new URLSearchParams({ steps: String(ADHOC_STEPS) });
    if ($("members").value) params.set("members", $("members").value);
    $("adhoc-status").textContent = `Forecasting ${label} (${(body.size / 1e6).toFixed(1)} MB)…`;
    document.body.dataset.adhoc = "running";
    try {
      const answer = await (await api(`v1/nowcasts/adhoc?${params}`, {
        method: "POST", headers: { "Content-Type": type }, body,
      })).json();
      state.mode = "adhoc";
      state.adhocName = label;
      state.meta = answer;
      state.index = answer;
      state.point = null;
      $("point-panel").hidden = true;
      $("back-to-feed").hidden = false;
      $("adhoc-status").textContent = `Forecast of ${label} by ${answer.model}.`;
      document.body.dataset.adhoc = "done";
      await showProduct();
    } catch (error) {
      document.body.dataset.adhoc = "failed";
      $("adhoc-status").textContent = `Could not forecast ${label}: ${error.message}`;
    }
  }

  // Several radar files go as one uncompressed tar (POSIX ustar), under names of the page's own.
  async function tarOf(files) {
    const encoder = new TextEncoder();
    const parts = [];
    for (const [i, file] of files.entries()) {
      const header = new Uint8Array(512);
      const put = (text, offset, length) => header.set(encoder.encode(text).subarray(0, length), offset);
      const suffix = file.name.slice(file.name.lastIndexOf(".")).toLowerCase();
      put(`frame${String(i).padStart(3, "0")}${suffix}`, 0, 100);
      put("0000644\0", 100, 8);
      put("0000000\0", 108, 8);
      put("0000000\0", 116, 8);
      put(`${file.size.toString(8).padStart(11, "0")}\0`, 124, 12);
      put(`${Math.floor(Date.now() / 1000).toString(8).padStart(11, "0")}\0`, 136, 12);
      put("        ", 148, 8);  // the checksum counts its own field as spaces
      put("0", 156, 1);
      put("ustar\0", 257, 6);
      put("00", 263, 2);
      const sum = header.reduce((a, b) => a + b, 0);
      put(`${sum.toString(8).padStart(6, "0")}\0 `, 148, 8);
      parts.push(header, new Uint8Array(await file.arrayBuffer()));
      const pad = (512 - (file.size % 512)) % 512;
      if (pad) parts.push(new Uint8Array(pad));
    }
    parts.push(new Uint8Array(1024));
    return new Blob(parts, { type: "application/x-tar" });
  }

  const drop = $("drop-zone");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    forecastFile([...event.dataTransfer.files]).catch(reportError);
  });
  // a file dropped beside the zone must not make the browser leave the page to open it
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  $("file-input").addEventListener("change", (event) => forecastFile([...event.target.files]).catch(reportError));
  $("back-to-feed").addEventListener("click", () => {
    state.mode = "feed";
    state.meta = null;
    state.point = null;
    $("point-panel").hidden = true;
    $("back-to-feed").hidden = true;
    $("adhoc-status").textContent = "";
    reload();
  });

  // --- start ------------------------------------------------------------------------------------------------

  setInterval(reload, REFRESH_MS);
  setInterval(() => { if (state.meta) renderInfo(); }, 30000);
  reload();
})();
