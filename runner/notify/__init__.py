"""Notifiers: how the owner hears about tasks and answers the policy's `ask` decisions."""

from __future__ import annotations

from runner.notify.base import Button, Message, Notifier
from runner.notify.log import LogNotifier

__all__ = ["Button", "LogNotifier", "Message", "Notifier"]
