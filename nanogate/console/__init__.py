"""The operator console: login sessions, server-drawn charts, thumbnails and the page shells.

Every number and action on its pages comes from the admin API under /admin/..., so whatever the
console does an operator can script.
"""
