"""The API translators: OpenAI and Ollama requests in, the worker's events out as their answers.

``openai`` and ``ollama`` parse and validate requests, ``openai_answers`` and
``worker_events`` shape what the worker streams into each API's answer,
``ollama_models`` lists and shows models the Ollama way, ``embeddings``
serves both APIs' embedding endpoints. The routes in ``routes/`` call them.
"""
