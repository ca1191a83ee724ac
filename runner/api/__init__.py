"""The HTTP front end: routes (parse, call an operation, render) and the OpenAPI document of them."""
