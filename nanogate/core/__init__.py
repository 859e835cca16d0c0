"""The shared vocabulary every layer speaks: types, errors, the catalog, settings, the Gemini
shape."""
