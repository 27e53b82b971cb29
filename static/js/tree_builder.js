// The tree page (templates/admin/events/node/overview.html). htmx does the requests; this file only
// opens and closes the page's two dialogs (the type menu of a "+", and the node's form), puts the
// keyboard focus where the server says after htmx swapped the tree, keeps collapsed containers
// collapsed across swaps, and shows and hides a condition's rule rows in place. Without it every
// link and button still works, one page at a time.
(() => {
  "use strict";

  const byId = (id) => document.getElementById(id);
  const storageKey = `events-tree-closed:${location.pathname}`;
  const closed = new Set(JSON.parse(sessionStorage.getItem(storageKey) || "[]"));

  function openDialog(dialog) {
    if (dialog && !dialog.open) dialog.showModal();
  }

  function closeDialog(dialog) {
    if (dialog && dialog.open) dialog.close();
  }

  function showMessage(text, level) {
    const region = byId("events-tree-message");
    if (!region || !text) return;
    const line = document.createElement("p");
    line.className = `events-message-${level}`;
    line.textContent = text;
    region.replaceChildren(line);
  }

  function focusFirst(ids) {
    for (const id of ids || []) {
      const element = byId(id);
      if (element) {
        element.focus();
        element.scrollIntoView({ block: "nearest" });
        return;
      }
    }
  }

  // Containers the admin collapsed stay collapsed when htmx swaps the tree, and on reload.
  function applyCollapsed() {
    for (const id of closed) {
      const details = byId(id);
      if (details) details.open = false;
    }
  }

  document.addEventListener(
    "toggle",
    (event) => {
      const details = event.target;
      if (!(details instanceof HTMLDetailsElement) || !details.classList.contains("events-steps")) return;
      if (details.open) closed.delete(details.id);
      else closed.add(details.id);
      sessionStorage.setItem(storageKey, JSON.stringify([...closed]));
    },
    true,
  );

  // A condition's rule rows: empty rows past the first stay hidden until "Add a rule".
  function rowIsEmpty(row) {
    return [...row.querySelectorAll("input, select, textarea")].every((input) => !input.value);
  }

  function prepareRows(root) {
    for (const table of root.querySelectorAll("[data-events-rows]")) {
      const rows = [...table.querySelectorAll("[data-events-row]")];
      rows.forEach((row, index) => {
        row.hidden = index > 0 && rowIsEmpty(row) && !row.querySelector(".errorlist");
      });
      updateAddRow(table);
    }
  }

  function updateAddRow(table) {
    const button = table.parentElement.querySelector("[data-events-add-row]");
    if (button) button.hidden = !table.querySelector("[data-events-row][hidden]");
  }

  function addRow(button) {
    const table = button.closest("fieldset").querySelector("[data-events-rows]");
    const row = table.querySelector("[data-events-row][hidden]");
    if (!row) return;
    row.hidden = false;
    updateAddRow(table);
    row.querySelector("input, select, textarea").focus();
  }

  function removeRow(button) {
    const row = button.closest("[data-events-row]");
    const table = row.closest("[data-events-rows]");
    for (const input of row.querySelectorAll("input, select, textarea")) input.value = "";
    for (const error of row.querySelectorAll(".errorlist")) error.remove();
    if ([...table.querySelectorAll("[data-events-row]")].filter((each) => !each.hidden).length > 1) {
      row.hidden = true;
    }
    updateAddRow(table);
    const add = table.parentElement.querySelector("[data-events-add-row]");
    (add && !add.hidden ? add : row.querySelector("select, input")).focus();
  }

  document.addEventListener("click", (event) => {
    const add = event.target.closest("[data-events-add]");
    const menu = byId("events-type-menu");
    if (add && menu) {
      // A "+": the type menu, told where the new node goes. Choosing a type asks for its form.
      event.preventDefault();
      const form = menu.querySelector("form");
      const where = new URLSearchParams(add.dataset.eventsAdd);
      for (const name of ["event", "ref", "position", "branch"]) form.elements[name].value = where.get(name) || "";
      byId("events-type-menu-where").textContent = `${add.dataset.eventsWhere}: choose its type.`;
      openDialog(menu);
      return;
    }
    const closer = event.target.closest("[data-events-close]");
    if (closer && closer.closest("dialog")) {
      event.preventDefault();
      closeDialog(closer.closest("dialog"));
      return;
    }
    const addRowButton = event.target.closest("[data-events-add-row]");
    if (addRowButton) {
      addRow(addRowButton);
      return;
    }
    const removeRowButton = event.target.closest("[data-events-remove-row]");
    if (removeRowButton) removeRow(removeRowButton);
  });

  // After the settle, not the swap: htmx makes new content live (its hx- attributes) when it settles,
  // and a form shown earlier could be sent by the browser itself, as a page.
  document.addEventListener("htmx:afterSettle", (event) => {
    const target = event.detail.target;
    if (target && target.id === "events-dialog-body") {
      // A node's form (or a delete to confirm) arrived: show it; after a refused save, go to the first error.
      closeDialog(byId("events-type-menu"));
      prepareRows(target);
      const dialog = byId("events-dialog");
      if (dialog.open) {
        const invalid = target.querySelector("[aria-invalid='true']") || target.querySelector(".events-form-errors");
        (invalid || target.querySelector("input:not([type=hidden]), select, textarea, button")).focus();
      } else {
        openDialog(dialog);
      }
    }
  });

  // At once when the tree is swapped in, before the browser reports its <details> as opened.
  document.addEventListener("htmx:afterSwap", applyCollapsed);

  // The server changed the tree (add, save, move, delete, or refused one): the tree is already
  // swapped; close the dialogs, say what happened, and put the focus where the server says.
  document.addEventListener("events:treeChanged", (event) => {
    closeDialog(byId("events-dialog"));
    closeDialog(byId("events-type-menu"));
    showMessage(event.detail.message, event.detail.level);
    focusFirst(event.detail.focus);
  });

  document.addEventListener("htmx:responseError", (event) => {
    const status = event.detail.xhr ? event.detail.xhr.status : "";
    showMessage(`The server refused that (HTTP ${status}). Reload the page and try again.`, "error");
  });

  document.addEventListener("htmx:sendError", () => {
    showMessage("The server could not be reached. Nothing was changed; try again.", "error");
  });

  document.addEventListener("DOMContentLoaded", applyCollapsed);
})();
