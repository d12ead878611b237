// Routing by the URL's hash (#/vms/web), so the daemon serves one page at /
// and no console path can shadow an API path. Back and forward work, and
// every page has a link that can be shared (the token is not in it).
import { useEffect, useState } from 'preact/hooks';

export type Route = { page: 'hosts' } | { page: 'vms' } | { page: 'vm'; name: string } | { page: 'tasks' } | { page: 'tree' };

export function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  switch (parts[0]) {
    case 'hosts':
      return { page: 'hosts' };
    case 'vms':
      return parts[1] ? { page: 'vm', name: parts[1] } : { page: 'vms' };
    case 'tasks':
      return { page: 'tasks' };
    case 'tree':
      return { page: 'tree' };
    default:
      return { page: 'vms' };
  }
}

export function href(route: Route): string {
  return route.page === 'vm' ? `#/vms/${encodeURIComponent(route.name)}` : `#/${route.page}`;
}

export function navigate(route: Route): void {
  location.hash = href(route);
}

export function useRoute(): Route {
  const [route, setRoute] = useState(() => parseRoute(location.hash));
  useEffect(() => {
    const onChange = () => setRoute(parseRoute(location.hash));
    addEventListener('hashchange', onChange);
    return () => removeEventListener('hashchange', onChange);
  }, []);
  return route;
}
