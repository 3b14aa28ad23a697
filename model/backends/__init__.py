"""Student backends. Import them through :func:`model.load_student`, not directly."""
