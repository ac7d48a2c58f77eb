"""What an algorithm's two sides exchange.

Layouts of what an algorithm's two sides exchange (record names, key prefixes), one module per algorithm,
imported by both its strategy and its client so that neither imports the other.
"""
