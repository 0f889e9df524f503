// Asks before a form that acts on every dead letter is sent (the server also wants its box ticked).
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
