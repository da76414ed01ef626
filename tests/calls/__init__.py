"""Tests of app.calls."""
