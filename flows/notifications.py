"""Notifications: a Slack-compatible webhook block and two Prefect automations that send to it.

    automation notify setup --webhook https://hooks.slack.com/services/T/B/X   # or any webhook

- Block: a Prefect `CustomWebhookNotificationBlock` named NAME that POSTs `{"text": "<subject>\\n<body>"}`
  (what a Slack incoming webhook, Mattermost, Rocket.Chat and most chat webhooks accept). The URL is
  kept in the block's secrets (templated into the request), so the UI never shows it.
- `NAME-flow-run-failed`: any flow run entering Failed or Crashed (the server's own
  `prefect.flow-run.Failed` / `.Crashed` events) -> a message with the flow, the run name, its
  state message and its UI link.
- `NAME-regression`: the custom event `automation.regression.detected` (flows/events.py, emitted
  when a report has a cell that failed its gates) -> a message listing the failing cells (model,
  scheme, failing metrics with their recovery) and the report link.

Setup is idempotent (a second run updates the block and the automations in place; disabling one
kind deletes its automation); `remove` deletes all three. Everything lives on the Prefect server
that `PREFECT_API_URL` names: the server's triggers and actions services do the sending.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID

from automation.errors import NotifyError
from flows.events import REGRESSION_EVENT

DEFAULT_NAME = "llm-automation"
BLOCK_TYPE_SLUG = "custom-webhook"
FAILED_SUFFIX = "-flow-run-failed"
REGRESSION_SUFFIX = "-regression"
FAILED_STATES = ("Failed", "Crashed")
TAG = "llm-automation"

FAILURE_SUBJECT = "Prefect flow run {{ flow_run.name }} {{ flow_run.state.name | lower }}"
FAILURE_BODY = (
    "Flow run {{ flow_run.name }} of flow {{ flow.name }} entered {{ flow_run.state.name }}"
    "{% if flow_run.state.message %}: {{ flow_run.state.message }}{% endif %}\n"
    "{{ flow_run | ui_url }}"
)
REGRESSION_SUBJECT = "Regression detected: {{ event.payload.title }}"
REGRESSION_BODY = (
    "{{ event.payload.regressed }} cell(s) of {{ event.payload.series }} failed their gates:\n"
    "{% for cell in event.payload.cells %}- {{ cell.summary }}\n{% endfor %}"
    "Report: {{ event.payload.report_url }}"
    "{% if event.payload.flow_run_url and event.payload.flow_run_url != event.payload.report_url %}"
    "\nFlow run: {{ event.payload.flow_run_url }}{% endif %}"
)
SLACK_JSON = {"text": "{{subject}}\n{{body}}"}


def check_name(name: str) -> str:
    """Block names are slugs: lowercase letters, digits and dashes."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,80}", name):
        raise NotifyError(f"invalid name {name!r}: use lowercase letters, digits and dashes")
    return name


def check_webhook(url: str) -> str:
    if not re.match(r"^https?://[^\s/]+", url):
        raise NotifyError(f"invalid webhook URL {url!r}: it must start with http:// or https://")
    return url


def automation_names(name: str) -> dict[str, str]:
    return {"failure": f"{name}{FAILED_SUFFIX}", "regression": f"{name}{REGRESSION_SUFFIX}"}


def webhook_block(name: str, webhook: str) -> Any:
    """The block (not saved): POST {"text": subject + body} to the webhook (URL kept as a secret)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    return CustomWebhookNotificationBlock(
        name=name, url="{{webhook_url}}", method="POST", json_data=dict(SLACK_JSON),
        headers={"Content-Type": "application/json"}, secrets={"webhook_url": check_webhook(webhook)})


def failure_automation(name: str, block_id: UUID) -> Any:
    """Flow runs entering Failed or Crashed -> a notification (an AutomationCore, not saved)."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

    return AutomationCore(
        name=automation_names(name)["failure"],
        description="Notify the webhook when a flow run fails or crashes (automation notify setup).",
        enabled=True, tags=[TAG],
        trigger=EventTrigger(expect={f"prefect.flow-run.{s}" for s in FAILED_STATES},
                             match={"prefect.resource.id": "prefect.flow-run.*"},
                             posture=Posture.Reactive, threshold=1),
        actions=[SendNotification(block_document_id=block_id, subject=FAILURE_SUBJECT, body=FAILURE_BODY)])


def regression_automation(name: str, block_id: UUID) -> Any:
    """`automation.regression.detected` -> a notification with the failing cells (not saved)."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

    return AutomationCore(
        name=automation_names(name)["regression"],
        description="Notify the webhook when a report's gates detect a regression (automation notify setup).",
        enabled=True, tags=[TAG],
        trigger=EventTrigger(expect={REGRESSION_EVENT}, match={"prefect.resource.id": "*"},
                             posture=Posture.Reactive, threshold=1),
        actions=[SendNotification(block_document_id=block_id, subject=REGRESSION_SUBJECT, body=REGRESSION_BODY)])


@dataclass
class NotifyState:
    name: str
    api_url: str | None
    block_id: str | None = None
    automations: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {id, name, enabled}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise NotifyError("PREFECT_API_URL is not set: point it at the Prefect server that should send the "
                          "notifications (on the local stack: source DIR/env)")
    return str(url)


async def _find_block_id(client: Any, name: str) -> UUID | None:
    from prefect.exceptions import ObjectNotFound

    try:
        doc = await client.read_block_document_by_name(name, block_type_slug=BLOCK_TYPE_SLUG)
    except ObjectNotFound:
        return None
    return UUID(str(doc.id))


async def _automations(client: Any, name: str) -> dict[str, list[Any]]:
    return {kind: list(await client.read_automations_by_name(full))
            for kind, full in automation_names(name).items()}


def _describe(found: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    return {kind: {"id": str(items[0].id), "name": items[0].name, "enabled": items[0].enabled}
            for kind, items in found.items() if items}


async def setup_notifications(webhook: str, name: str = DEFAULT_NAME, on_failure: bool = True,
                              on_regression: bool = True) -> NotifyState:
    """Create or update the webhook block and the wanted automations (deleting unwanted ones)."""
    from prefect.client.orchestration import get_client

    check_name(name)
    api_url = _api_url()
    block = webhook_block(name, webhook)
    block_id = UUID(str(await block.asave(name, overwrite=True)))
    wanted = {"failure": failure_automation(name, block_id) if on_failure else None,
              "regression": regression_automation(name, block_id) if on_regression else None}
    async with get_client() as client:
        found = await _automations(client, name)
        for kind, automation in wanted.items():
            existing = found[kind]
            if automation is None:
                for old in existing:
                    await client.delete_automation(old.id)
                continue
            if existing:
                await client.update_automation(existing[0].id, automation)
                for extra in existing[1:]:  # duplicates from concurrent setups
                    await client.delete_automation(extra.id)
            else:
                await client.create_automation(automation)
        state = NotifyState(name=name, api_url=api_url, block_id=str(block_id),
                            automations=_describe(await _automations(client, name)))
    return state


async def notification_status(name: str = DEFAULT_NAME) -> NotifyState:
    from prefect.client.orchestration import get_client

    check_name(name)
    api_url = _api_url()
    async with get_client() as client:
        block_id = await _find_block_id(client, name)
        return NotifyState(name=name, api_url=api_url, block_id=str(block_id) if block_id else None,
                           automations=_describe(await _automations(client, name)))


async def remove_notifications(name: str = DEFAULT_NAME) -> list[str]:
    """Delete the automations and the block; returns what was deleted."""
    from prefect.client.orchestration import get_client

    check_name(name)
    _api_url()
    removed: list[str] = []
    async with get_client() as client:
        for items in (await _automations(client, name)).values():
            for automation in items:
                await client.delete_automation(automation.id)
                removed.append(f"automation {automation.name}")
        block_id = await _find_block_id(client, name)
        if block_id is not None:
            await client.delete_block_document(block_id)
            removed.append(f"block {BLOCK_TYPE_SLUG}/{name}")
    return removed


async def send_test(name: str = DEFAULT_NAME, message: str = "Test notification from llm-automation") -> None:
    """Send one message through the saved block (checks the webhook end to end, without the server)."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    check_name(name)
    _api_url()
    block: Any = await CustomWebhookNotificationBlock.aload(name)
    await block.anotify(body=message, subject="llm-automation")
