"""The ``openai:`` kind: a student behind an OpenAI-compatible ``/chat/completions`` endpoint
(:mod:`.student`); the HTTP client it shares with the training code's teacher is
:mod:`model.http`."""
