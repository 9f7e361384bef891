// The OpenAPI page: Swagger UI, served from the swagger-ui-dist npm package (works offline, no inline script).
/* global SwaggerUIBundle */
const root = document.getElementById("swagger-ui");
SwaggerUIBundle({ url: root.dataset.openapiUrl, domNode: root, deepLinking: true });
