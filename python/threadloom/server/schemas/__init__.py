"""msgspec Structs for every request, response and stream frame the server speaks."""
