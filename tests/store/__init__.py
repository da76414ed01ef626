"""Tests of app.store."""
