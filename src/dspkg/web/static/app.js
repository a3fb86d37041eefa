// dspkg pages: small helpers, nothing the pages need to work.
"use strict";

// "copy" buttons put a URI on the clipboard.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button.copy");
  if (!button || !navigator.clipboard) return;
  navigator.clipboard.writeText(button.dataset.copy).then(() => {
    button.textContent = "copied";
    setTimeout(() => { button.textContent = "copy"; }, 1200);
  });
});

// The Packages section opens when the address ends in #packages, and remembers it.
function syncPackages() {
  const details = document.getElementById("packages");
  if (details && location.hash === "#packages") details.open = true;
}
window.addEventListener("hashchange", syncPackages);
syncPackages();
const packages = document.getElementById("packages");
if (packages) {
  packages.addEventListener("toggle", () => {
    const url = new URL(location.href);
    url.hash = packages.open ? "packages" : "";
    history.replaceState(null, "", url);
  });
}
