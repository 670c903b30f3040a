// Live parts of /ui: an element with data-refresh="<url>" is replaced by that URL's HTML
// every 2 s until the answer holds a data-final mark. The answer is the server's own
// rendering (texts escaped there); no inline script exists anywhere (the CSP forbids it).
"use strict";
function refresh(element) {
  const url = element.dataset.refresh;
  if (!url || element.querySelector("[data-final]")) return;
  setTimeout(async () => {
    try {
      const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (answer.redirected || answer.status === 401 || answer.status === 403) {
        window.location.assign("/ui/login");
        return;
      }
      if (answer.ok) element.innerHTML = await answer.text();
    } catch (error) {
      // the server is away for a moment: try again on the next round
    }
    refresh(element);
  }, 2000);
}
// The review form: 1-9 toggle a label, Enter submits, s skips.
function shortcuts(form) {
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const box = form.querySelector(`input[data-key="${event.key}"]`);
    if (box) {
      box.checked = !box.checked;
      event.preventDefault();
    } else if (event.key === "s") {
      form.querySelector("[data-shortcut=s]").click();
      event.preventDefault();
    } else if (event.key === "Enter" && !(event.target instanceof HTMLButtonElement)) {
      form.requestSubmit();
      event.preventDefault();
    }
  });
}
document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("[data-refresh]").forEach(refresh);
  const review = document.getElementById("review");
  if (review) shortcuts(review);
});
