"""The groups of settings ``modfactory.settings.Settings`` gathers, one concept each."""
