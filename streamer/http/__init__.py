"""HTTP/1.1 on anyio streams with httptools parsing, and the route interface protocols plug into."""
