"""Notifications of pending requests: rules, messages, delivery, and safe action links."""
