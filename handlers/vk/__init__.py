"""VK handlers: one labeler per audience (citizens only; staff work in Telegram)."""
