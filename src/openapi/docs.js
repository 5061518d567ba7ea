// Starts Swagger UI on this server's OpenAPI document. Loaded by the /docs page; every asset is
// served by the server itself (no CDN), and the online validator badge is off (validatorUrl: null),
// so viewing the page fetches nothing from elsewhere.
window.addEventListener('load', function () {
  'use strict';
  var root = document.getElementById('swagger-ui');
  window.ui = SwaggerUIBundle({
    url: new URL(root.dataset.url, document.baseURI).href,
    dom_id: '#swagger-ui',
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: 'BaseLayout',
    displayRequestDuration: true,
    defaultModelsExpandDepth: 0,
  });
});
