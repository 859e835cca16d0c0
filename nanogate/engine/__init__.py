"""The request pipeline: the gateway's steps, results kept for replay, usage records."""
