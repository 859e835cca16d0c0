"""The task API behind the routes: a durable queue, its workers and their callbacks."""
