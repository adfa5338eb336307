"""Jinja2 templates of the HTML report and leaderboard (package data)."""
