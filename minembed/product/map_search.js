// minembed map ... -o map.html: the search box, run by Plotly after the plot is drawn
// (viz.write_html fills in the data, Plotly the plot id). Documents
// whose text (its first 1,000 characters, lower-cased) contains the query keep their
// colour, the others fade; map.html#search=words opens the page with that search.
var gd = document.getElementById('{plot_id}'), docs = $DOCS, alpha = $ALPHA;
var box = document.createElement('input'), info = document.createElement('span');
box.type = 'search'; box.id = 'minembed-search'; box.placeholder = 'search the documents';
box.style.cssText = 'font-size:14px;width:24em;margin:4px 8px'; info.id = 'minembed-hits';
var outer = gd.parentNode;  // plotly's sized div: the box goes above it
outer.parentNode.insertBefore(box, outer); outer.parentNode.insertBefore(info, outer);
box.addEventListener('input', function () {
  var q = box.value.trim().toLowerCase(), hits = 0;
  var op = docs.map(function (d) { return d.map(function (t) {
    if (!q) return alpha; if (t.indexOf(q) < 0) return 0.03; hits++; return 1; }); });
  Plotly.restyle(gd, {'marker.opacity': op});
  info.textContent = q ? hits + ' of $N documents match' : '';
});
if (location.hash.indexOf('#search=') === 0) {
  box.value = decodeURIComponent(location.hash.slice(8)); box.dispatchEvent(new Event('input')); }
