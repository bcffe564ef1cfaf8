// Keyboard labelling for the task page: 1..9 best, Shift+1..9 worst, arrows move a cursor over
// the candidates (b / w mark it), h flags a hallucination, z zooms, Enter submits, s skips.
// The form works without this script; the server checks every label again.
(function () {
  "use strict";
  var form = document.getElementById("label-form");
  if (!form) { return; }
  var cards = Array.prototype.slice.call(document.querySelectorAll(".candidate"));
  var flag = document.getElementById("hallucination");
  var description = document.getElementById("description");
  var message = document.getElementById("client-error");
  var cursor = 0;

  function radio(role, index) {
    return cards[index] && cards[index].querySelector("input[name=" + role + "]");
  }
  function chosen(role) {
    var input = form.querySelector("input[name=" + role + "]:checked");
    return input ? input.value : "";
  }
  function refresh() {
    cards.forEach(function (card, index) {
      card.classList.toggle("cursor", index === cursor);
      card.classList.toggle("is-best", radio("best", index).checked);
      card.classList.toggle("is-worst", radio("worst", index).checked);
    });
    description.classList.toggle("hidden", !flag.checked);
    if (!message.classList.contains("hidden")) { show(problem()); }
  }
  function show(text) {
    message.textContent = text;
    message.classList.toggle("hidden", !text);
  }
  function choose(role, index) {
    var input = radio(role, index);
    if (input) { input.checked = true; cursor = index; refresh(); }
  }
  function problem() {
    if (!chosen("best")) { return "choose the best candidate (1..9)"; }
    if (!chosen("worst")) { return "choose the worst candidate (Shift+1..9)"; }
    if (chosen("best") === chosen("worst")) { return "best and worst must differ"; }
    if (flag.checked && !description.value.trim()) { return "describe the hallucination"; }
    return "";
  }
  function submit() {
    var text = problem();
    show(text);
    if (!text) { form.submit(); }
  }
  function toggleFlag() {
    flag.checked = !flag.checked;
    refresh();
    if (flag.checked) { description.focus(); }
  }

  form.addEventListener("submit", function (event) { event.preventDefault(); submit(); });
  form.addEventListener("change", refresh);
  description.addEventListener("input", refresh);
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.target === description) {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); submit(); }
      else if (event.key === "Escape") { description.blur(); }
      return;
    }
    var digit = /^(Digit|Numpad)([1-9])$/.exec(event.code);
    if (digit) {
      event.preventDefault();
      choose(event.shiftKey ? "worst" : "best", Number(digit[2]) - 1);
      return;
    }
    switch (event.key) {
      case "ArrowRight": cursor = Math.min(cards.length - 1, cursor + 1); refresh(); break;
      case "ArrowLeft": cursor = Math.max(0, cursor - 1); refresh(); break;
      case "b": choose("best", cursor); break;
      case "w": choose("worst", cursor); break;
      case "h": toggleFlag(); break;
      case "z": document.body.classList.toggle("zoomed"); break;
      case "s": document.getElementById("skip-form").submit(); break;
      case "Enter": submit(); break;
      default: return;
    }
    event.preventDefault();
  });
  refresh();
}());
