"""Drive one chat in Open WebUI with Playwright (see scripts/try_open_webui.sh).

Opens Open WebUI (auth off), picks the model through the ``models`` query parameter,
sends one message with every setting at its default, waits for the assistant's answer
to appear and to finish, checks it is not an error, and saves a screenshot. Exits 0
when an answer appeared, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from urllib.parse import quote

from playwright.sync_api import sync_playwright

# What Open WebUI shows in the answer's place when model-swap refused the request.
ERROR_MARKERS = ("is not supported by", "the context holds", "not found, try pulling", "Ollama: 4")
ANSWER = "#response-content-container, .chat-assistant"


def dismiss_dialogs(page, seconds: float = 20) -> None:
    """Close what Open WebUI opens over the chat on a first visit (the changelog)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        dialogs = page.locator("div[role='dialog']")
        if not dialogs.count() or not dialogs.first.is_visible():
            time.sleep(0.5)
            if not dialogs.count() or not dialogs.first.is_visible():
                return
            continue
        for label in ("Okay, Let's Go!", "Get started", "Dismiss", "Close"):
            button = dialogs.first.get_by_role("button", name=label)
            if button.count() and button.first.is_visible():
                button.first.click()
                break
        else:
            page.keyboard.press("Escape")
        time.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--chromium", required=True)
    parser.add_argument("--screenshot", required=True)
    parser.add_argument("--message", default="Write one sentence about Paris.")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(
            f"{args.url}/?models={quote(args.model)}",
            wait_until="domcontentloaded",
            timeout=120_000,
        )
        box = page.locator("#chat-input")
        box.wait_for(timeout=120_000)
        time.sleep(3)
        dismiss_dialogs(page)
        box.click()
        page.keyboard.type(args.message)
        page.keyboard.press("Enter")
        deadline = time.monotonic() + args.timeout
        text = ""
        while time.monotonic() < deadline:
            answers = page.locator(ANSWER)
            if answers.count():
                text = answers.last.inner_text().strip()
                busy = (
                    page.locator("button[aria-label='Stop']").count()
                    or page.locator(".animate-pulse, .loading").count()
                )
                if text and not busy:
                    break
            time.sleep(1)
        time.sleep(1)
        page.screenshot(path=args.screenshot, full_page=False)
        browser.close()
    print(f"answer shown by Open WebUI: {text[:300]!r}")
    if not text:
        print("no answer appeared", file=sys.stderr)
        return 1
    if any(marker in text for marker in ERROR_MARKERS):
        print("the answer is an error", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
