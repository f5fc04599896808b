// Renders /api/openapi.json (the same origin). No validator badge (it would call a third
// party), no "try it out" deep links to other hosts.
window.ui = SwaggerUIBundle({
  url: "/api/openapi.json",
  dom_id: "#api-reference",
  validatorUrl: null,
  deepLinking: true,
  tryItOutEnabled: false,
});
