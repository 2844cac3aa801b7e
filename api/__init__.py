"""HTTP surface: Litestar app, controllers, auth, the one error table."""
